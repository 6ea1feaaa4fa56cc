using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using ShardPipe.Host.Cli;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Serving;

/// <summary>
/// <c>shardpipe serve</c>'s HTTP front end (Kestrel) over a <see cref="ClusterSession"/> that serves the model. This file:
/// start-up, the routes, and the error contract (OpenAI's error body and status for anything that goes wrong before a
/// response starts). The endpoints are grouped by concern in the other OpenAiServer.*.cs files: generation
/// (/v1/completions, /v1/chat/completions), tokenization (vLLM's /tokenize, /detokenize) and status (/health, /status,
/// /metrics, the dashboard). Request and response shapes live in <see cref="CompletionRequest"/>,
/// <see cref="ChatRequest"/> and <see cref="OpenAiShapes"/>; chat prompts in <see cref="ChatPromptBuilder"/>.
/// </summary>
public sealed partial class OpenAiServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ClusterSession _session;
    private readonly ServeSettings _settings;
    private readonly ModelTokenizer _tokenizer;
    private readonly CompletionRunner _runner;
    private readonly ServingAdmission _admission;
    private readonly ChatPromptBuilder _chat;
    private readonly long _positions;
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    private readonly ILogger _log;
    private readonly TokenRate _rate = new();
    private readonly ServingMetrics _metrics = new();

    public Uri Address { get; private set; } = null!;

    private OpenAiServer(WebApplication app, ClusterSession session, ServeSettings settings, ModelTokenizer tokenizer, IReadOnlySet<long> eos, long positions, ILogger log)
    {
        _app = app;
        _session = session;
        _settings = settings;
        _tokenizer = tokenizer;
        _positions = positions;
        _log = log;
        _admission = new ServingAdmission(settings.MaxActive, settings.MaxQueued);
        _runner = new CompletionRunner(session.Client, tokenizer, eos, settings.StallTimeout, settings.PrefillChunk, () => _rate.Add(1), _metrics, settings.Speculate);
        // The chat templates are read once: one that cannot be parsed makes every chat request a 400 naming why.
        _chat = new ChatPromptBuilder(settings.ModelFolder, tokenizer);
    }

    /// <summary>Starts listening (port 0 = any free port; <see cref="Address"/> says which).</summary>
    public static async Task<OpenAiServer> StartAsync(ServeSettings settings, ClusterSession session, ILogger log)
    {
        if (!ModelTokenizer.Exists(settings.ModelFolder))
            throw new InvalidInputException($"{settings.ModelFolder}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json + merges.txt): serve needs one to turn text into tokens");
        var tokenizer = ModelTokenizer.Load(settings.ModelFolder);
        var config = PretrainedConfig.FromFolder(settings.ModelFolder);
        var eos = StopTokens.From(PreTrainedModel.LoadGenerationConfig(settings.ModelFolder, config)).Eos.ToHashSet();
        long positions = config.GetLongOrNull("max_position_embeddings") ?? config.GetLongOrNull("n_positions") ?? long.MaxValue;
        if (settings.VocabSize == long.MaxValue && config.GetLongOrNull("vocab_size") is { } vocab) settings = settings with { VocabSize = vocab };

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = settings.MaxBodyBytes;
            if (settings.Host is "localhost") k.ListenLocalhost(settings.Port);
            else k.Listen(IPAddress.Parse(settings.Host), settings.Port);
        });
        var app = builder.Build();
        var server = new OpenAiServer(app, session, settings, tokenizer, eos, positions, log);
        server.Map(app);
        await app.StartAsync();
        var address = app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server.Address = new Uri(address.Replace("[::]", "localhost").Replace("0.0.0.0", "127.0.0.1"));
        return server;
    }

    private void Map(WebApplication app)
    {
        // The API key (vLLM's --api-key): checked before any route runs; /health is always open.
        if (_settings.ApiKey is { Length: > 0 } key)
            app.Use(async (ctx, next) =>
            {
                if (ServeAccess.NeedsKey(ctx.Request.Path, _settings.ProtectStatus) && !ServeAccess.Presents(ctx.Request.Headers.Authorization, key))
                {
                    var error = OpenAiException.Unauthorized();
                    ctx.Response.Headers.WWWAuthenticate = "Bearer";
                    await Json(ctx, error.Status, error.Body());
                    return;
                }
                await next(ctx);
            });
        app.MapGet("/v1/models", (HttpContext ctx) => Handle(ctx, () => Json(ctx, 200, OpenAiShapes.Models(_settings.ModelId, _created))));
        app.MapPost("/v1/completions", (HttpContext ctx) => Counted(ctx, "completions", () => Completions(ctx)));
        app.MapPost("/v1/chat/completions", (HttpContext ctx) => Counted(ctx, "chat_completions", () => ChatCompletions(ctx)));
        app.MapPost("/tokenize", (HttpContext ctx) => Handle(ctx, () => Tokenize(ctx)));
        app.MapPost("/detokenize", (HttpContext ctx) => Handle(ctx, () => Detokenize(ctx)));
        app.MapGet("/health", (HttpContext ctx) => Handle(ctx, () => Health(ctx)));
        app.MapGet("/status", (HttpContext ctx) => Handle(ctx, () => Status(ctx)));
        app.MapGet("/metrics", (HttpContext ctx) => Handle(ctx, () => Metrics(ctx)));
        app.MapGet("/", (HttpContext ctx) =>
        {
            ctx.Response.ContentType = "text/html; charset=utf-8";
            return ctx.Response.WriteAsync(Dashboard.Html, ctx.RequestAborted);
        });
    }

    /// <summary>Runs a handler with the error contract: OpenAI's error body and status for anything that goes wrong before the response starts.</summary>
    private async Task Handle(HttpContext ctx, Func<Task> handler)
    {
        try { await handler(); }
        catch (Exception ex) when (!ctx.Response.HasStarted && Classify(ex) is { } error)
        {
            if (error.Status >= 500) _log.LogWarning("{Method} {Path}: {Status} {Message}", ctx.Request.Method, ctx.Request.Path, error.Status, error.Message);
            if (error.RetryAfterSeconds is { } s) ctx.Response.Headers.RetryAfter = s.ToString();
            await Json(ctx, error.Status, error.Body());
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested) { } // the client went away
    }

    /// <summary>A generation endpoint: handled, then counted by outcome (cancelled when the client went away).</summary>
    private async Task Counted(HttpContext ctx, string endpoint, Func<Task> handler)
    {
        await Handle(ctx, handler);
        _metrics.Request(endpoint, ctx.RequestAborted.IsCancellationRequested ? "cancelled" : ServingMetrics.Outcome(ctx.Response.StatusCode));
    }

    private static OpenAiException? Classify(Exception ex) => ex switch
    {
        OpenAiException o => o,
        OperationCanceledException => null,
        BadHttpRequestException e => new OpenAiException(e.StatusCode, $"bad request: {e.Message}", "invalid_request_error"), // e.g. a body over the limit (413)
        Akka.Actor.AskTimeoutException => OpenAiException.Unavailable("the cluster's coordinator did not answer in time"),
        InvalidInputException e => OpenAiException.Invalid(e.Message, null),
        ChatTemplateException e => OpenAiException.Invalid(e.Message, "messages"),
        ShardPipeException e => OpenAiException.Unavailable(e.Message),
        _ => new OpenAiException(500, $"internal error: {ex.GetType().Name}: {ex.Message}", "server_error"),
    };

    private static async Task<JsonNode?> ReadBody(HttpContext ctx)
    {
        try { return await JsonNode.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted); }
        catch (JsonException ex) { throw OpenAiException.Invalid($"the body is not valid JSON: {ex.Message}", null); }
    }

    private static Task Json(HttpContext ctx, int status, JsonNode body)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        return ctx.Response.WriteAsync(body.ToJsonString(), ctx.RequestAborted);
    }

    private static async Task Event(HttpContext ctx, string data)
    {
        await ctx.Response.WriteAsync($"data: {data}\n\n", Encoding.UTF8, ctx.RequestAborted);
        await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
