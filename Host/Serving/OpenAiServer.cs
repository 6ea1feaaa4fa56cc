using System.Diagnostics;
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
using ShardPipe.Checkpoints;
using ShardPipe.Host.Cli;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Serving;

/// <summary>What <c>shardpipe serve</c> was asked for.</summary>
/// <param name="PrefillChunk">Positions of a long prompt prefilled per step (chunked prefill; 0 = all at once).</param>
public sealed record ServeOptions(string ModelId, string ModelFolder, string Host, int Port, int MaxActive, int MaxQueued, int MaxTokens, TimeSpan RequestTimeout,
    int PrefillChunk = 128);

/// <summary>
/// <c>shardpipe serve</c>'s HTTP front end (Kestrel): OpenAI's <c>/v1/models</c> and <c>/v1/completions</c> (streamed
/// as server-sent events or not), <c>/v1/chat/completions</c>, <c>/health</c>, <c>/status</c>, <c>/metrics</c> and the
/// dashboard at <c>/</c>, over a <see cref="ClusterSession"/> that serves the model. Prompts run as <see cref="Generate"/>
/// requests through the cluster, each its own (the stages merge concurrent requests' steps: continuous batching); a
/// client that disconnects cancels its request on every stage; every error is OpenAI's error body with its status.
/// </summary>
public sealed class OpenAiServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ClusterSession _session;
    private readonly ServeOptions _options;
    private readonly ModelTokenizer _tokenizer;
    private readonly CompletionRunner _runner;
    private readonly ServingAdmission _admission;
    private readonly long _positions;
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    private readonly ILogger _log;
    private readonly TokenRate _rate = new();
    private readonly ServingMetrics _metrics = new();
    private readonly ChatTemplate? _chatTemplate;
    private readonly string? _chatTemplateProblem;

    public Uri Address { get; private set; } = null!;

    private OpenAiServer(WebApplication app, ClusterSession session, ServeOptions options, ModelTokenizer tokenizer, IReadOnlySet<long> eos, long positions, ILogger log)
    {
        _app = app;
        _session = session;
        _options = options;
        _tokenizer = tokenizer;
        _positions = positions;
        _log = log;
        _admission = new ServingAdmission(options.MaxActive, options.MaxQueued);
        _runner = new CompletionRunner(session.Client, tokenizer, eos, TimeSpan.FromSeconds(120), options.PrefillChunk, () => _rate.Add(1), _metrics);
        // The chat template is read once: a template outside the supported subset makes every chat request a 400 naming why.
        if (tokenizer.Config.ChatTemplate is not { } source) _chatTemplateProblem = "the model has no chat_template in tokenizer_config.json; use /v1/completions";
        else
        {
            try { _chatTemplate = ChatTemplate.Parse(source); }
            catch (UnsupportedException ex) { _chatTemplateProblem = $"the model's chat_template cannot be rendered here: {ex.Message}"; }
        }
    }

    /// <summary>Starts listening (port 0 = any free port; <see cref="Address"/> says which).</summary>
    public static async Task<OpenAiServer> StartAsync(ServeOptions options, ClusterSession session, ILogger log)
    {
        if (!ModelTokenizer.Exists(options.ModelFolder))
            throw new InvalidInputException($"{options.ModelFolder}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json + merges.txt): serve needs one to turn text into tokens");
        var tokenizer = ModelTokenizer.Load(options.ModelFolder);
        var config = PretrainedConfig.FromFolder(options.ModelFolder);
        var eos = StopTokens.From(PreTrainedModel.LoadGenerationConfig(options.ModelFolder, config)).Eos.ToHashSet();
        long positions = config.GetLongOrNull("max_position_embeddings") ?? config.GetLongOrNull("n_positions") ?? long.MaxValue;

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = 4 << 20;
            if (options.Host is "localhost") k.ListenLocalhost(options.Port);
            else k.Listen(IPAddress.Parse(options.Host), options.Port);
        });
        var app = builder.Build();
        var server = new OpenAiServer(app, session, options, tokenizer, eos, positions, log);
        server.Map(app);
        await app.StartAsync();
        var address = app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server.Address = new Uri(address.Replace("[::]", "localhost").Replace("0.0.0.0", "127.0.0.1"));
        return server;
    }

    private void Map(WebApplication app)
    {
        app.MapGet("/v1/models", (HttpContext ctx) => Handle(ctx, () => Json(ctx, 200, new JsonObject
        {
            ["object"] = "list",
            ["data"] = new JsonArray(new JsonObject { ["id"] = _options.ModelId, ["object"] = "model", ["created"] = _created, ["owned_by"] = "shardpipe" }),
        })));
        app.MapPost("/v1/completions", (HttpContext ctx) => Counted(ctx, "completions", () => Completions(ctx)));
        app.MapPost("/v1/chat/completions", (HttpContext ctx) => Counted(ctx, "chat_completions", () => ChatCompletions(ctx)));
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

    private async Task Metrics(HttpContext ctx)
    {
        _metrics.Update(_admission, await _session.Client.StatusAsync(TimeSpan.FromSeconds(5)));
        ctx.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        await _metrics.Registry.CollectAndExportAsTextAsync(ctx.Response.Body, ctx.RequestAborted);
    }

    private static OpenAiException? Classify(Exception ex) => ex switch
    {
        OpenAiException o => o,
        OperationCanceledException => null,
        BadHttpRequestException e => new OpenAiException(e.StatusCode, $"bad request: {e.Message}", "invalid_request_error"), // e.g. a body over 4 MiB (413)
        Akka.Actor.AskTimeoutException => OpenAiException.Unavailable("the cluster's coordinator did not answer in time"),
        InvalidInputException e => OpenAiException.Invalid(e.Message, null),
        ShardPipeException e => OpenAiException.Unavailable(e.Message),
        _ => new OpenAiException(500, $"internal error: {ex.GetType().Name}: {ex.Message}", "server_error"),
    };

    private async Task<ClusterStatus> ReadyStatus()
    {
        var status = await _session.Client.StatusAsync(TimeSpan.FromSeconds(10));
        if (status.State != ClusterState.Ready)
            throw OpenAiException.Unavailable($"the model is not ready (state: {status.StateName}{(status.Detail is { } d ? $": {d}" : "")})");
        return status;
    }

    private static async Task<JsonNode?> ReadBody(HttpContext ctx)
    {
        try { return await JsonNode.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted); }
        catch (JsonException ex) { throw OpenAiException.Invalid($"the body is not valid JSON: {ex.Message}", null); }
    }

    private async Task Completions(HttpContext ctx)
    {
        var request = CompletionRequest.Parse(await ReadBody(ctx), _options.MaxTokens);
        if (request.Model != _options.ModelId) throw OpenAiException.UnknownModel(request.Model, _options.ModelId);
        var prompts = request.Prompts.Select((p, i) => Encode(p, request.Prompts.Count > 1 ? $"prompt[{i}]" : "prompt")).ToList();
        await Run(ctx, request, prompts, Shape.Completion);
    }

    /// <summary>
    /// The messages rendered with the model's chat template (add_generation_prompt = true, the special tokens by name),
    /// then encoded as <c>generate --prompt</c> encodes text, and run as a completion of that prompt.
    /// </summary>
    private async Task ChatCompletions(HttpContext ctx)
    {
        var chat = ChatRequest.Parse(await ReadBody(ctx), _options.MaxTokens);
        if (chat.Common.Model != _options.ModelId) throw OpenAiException.UnknownModel(chat.Common.Model, _options.ModelId);
        if (_chatTemplate is null) throw OpenAiException.Invalid(_chatTemplateProblem!, "messages");
        var c = _tokenizer.Config;
        var special = new Dictionary<string, string>();
        foreach (var (name, value) in new[] { ("bos_token", c.BosToken), ("eos_token", c.EosToken), ("unk_token", c.UnkToken), ("pad_token", c.PadToken) })
            if (value is not null) special[name] = value;
        string rendered;
        try { rendered = _chatTemplate.Render(chat.Messages, addGenerationPrompt: true, special); }
        catch (InvalidInputException ex) { throw OpenAiException.Invalid(ex.Message, "messages"); }
        var ids = Encode(new PromptInput(rendered, null), "messages");
        var request = chat.Common;
        // Chat's max_tokens has no fixed default: what the context leaves, within the server's cap.
        if (!chat.MaxTokensGiven) request = request with { MaxTokens = (int)Math.Max(1, Math.Min(_options.MaxTokens, _positions - ids.Length)) };
        await Run(ctx, request, new[] { ids }, Shape.Chat);
    }

    private enum Shape { Completion, Chat }

    private async Task Run(HttpContext ctx, CompletionRequest request, IReadOnlyList<long[]> prompts, Shape shape)
    {
        using var slot = await _admission.EnterAsync(ctx.RequestAborted);
        var status = await ReadyStatus();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted);
        timeout.CancelAfter(_options.RequestTimeout);
        try { await Respond(ctx, request, prompts, status, timeout, shape); }
        finally
        {
            // However the response ended (done, the client gone, a failed write), nothing of it keeps running: a run
            // still going is cancelled on every stage.
            timeout.Cancel();
        }
    }

    private async Task Respond(HttpContext ctx, CompletionRequest request, IReadOnlyList<long[]> prompts, ClusterStatus status,
        CancellationTokenSource timeout, Shape shape)
    {
        bool chat = shape == Shape.Chat;
        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        JsonObject Envelope(string objectName, JsonArray choices) => new()
        {
            ["id"] = id, ["object"] = objectName, ["created"] = created, ["model"] = _options.ModelId, ["choices"] = choices,
        };
        JsonObject Chunk(int index, string? text, string? finish, bool first = false)
        {
            JsonObject choice = chat
                ? new() { ["index"] = index, ["delta"] = first ? new JsonObject { ["role"] = "assistant", ["content"] = "" } : text is null ? new JsonObject() : new JsonObject { ["content"] = text }, ["logprobs"] = null, ["finish_reason"] = finish }
                : new() { ["index"] = index, ["text"] = text ?? "", ["logprobs"] = null, ["finish_reason"] = finish };
            return Envelope(chat ? "chat.completion.chunk" : "text_completion", new JsonArray(choice));
        }

        if (!request.Stream)
        {
            var results = await RunAll(prompts, request, status, null, timeout, ctx.RequestAborted);
            var choices = new JsonArray(results.Select((r, i) => (JsonNode)(chat
                ? new JsonObject { ["index"] = i, ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = r.Text }, ["logprobs"] = null, ["finish_reason"] = r.FinishReason }
                : new JsonObject { ["index"] = i, ["text"] = r.Text, ["logprobs"] = null, ["finish_reason"] = r.FinishReason })).ToArray());
            var response = Envelope(chat ? "chat.completion" : "text_completion", choices);
            response["usage"] = Usage(results);
            await Json(ctx, 200, response);
            return;
        }

        // Server-sent events: (chat: a first delta with the role) one event per released piece, then each choice's
        // finish, usage if asked, and [DONE].
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        var events = System.Threading.Channels.Channel.CreateUnbounded<JsonObject>(new() { SingleReader = true });
        if (chat) for (int i = 0; i < prompts.Count; i++) events.Writer.TryWrite(Chunk(i, null, null, first: true));
        var run = RunAll(prompts, request, status, (i, piece) => events.Writer.TryWrite(Chunk(i, piece, null)), timeout, ctx.RequestAborted)
            .ContinueWith(t => { events.Writer.TryComplete(); return t; }, TaskScheduler.Default).Unwrap();
        await ctx.Response.StartAsync(ctx.RequestAborted);
        await foreach (var e in events.Reader.ReadAllAsync(ctx.RequestAborted)) await Event(ctx, e.ToJsonString());
        try
        {
            var results = await run;
            for (int i = 0; i < results.Count; i++) await Event(ctx, Chunk(i, null, results[i].FinishReason).ToJsonString());
            if (request.IncludeUsage)
            {
                var usage = Envelope(chat ? "chat.completion.chunk" : "text_completion", new JsonArray());
                usage["usage"] = Usage(results);
                await Event(ctx, usage.ToJsonString());
            }
        }
        catch (Exception ex) when (!ctx.RequestAborted.IsCancellationRequested && Classify(ex) is { } error)
        {
            _log.LogWarning("stream {Id} ended with an error: {Message}", id, error.Message);
            await Event(ctx, error.Body().ToJsonString());
        }
        await Event(ctx, "[DONE]");
    }

    /// <summary>Every prompt of a request, concurrently (each its own pipeline request); a timeout is an error naming it.</summary>
    private async Task<IReadOnlyList<CompletionResult>> RunAll(IReadOnlyList<long[]> prompts, CompletionRequest request, ClusterStatus status,
        Action<int, string>? onPiece, CancellationTokenSource timeout, CancellationToken aborted)
    {
        try
        {
            return await Task.WhenAll(prompts.Select((ids, i) =>
                _runner.RunAsync(ids, request, status.Stages, piece => onPiece?.Invoke(i, piece), timeout.Token)));
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !aborted.IsCancellationRequested)
        {
            throw new OpenAiException(504, $"the request did not finish within {_options.RequestTimeout.TotalSeconds:0} s (--request-timeout)", "timeout");
        }
    }

    private long[] Encode(PromptInput p, string field)
    {
        long[] ids = p.Ids ?? _tokenizer.Encode(p.Text!).Ids.Select(i => (long)i).ToArray();
        if (ids.Length == 0) throw OpenAiException.Invalid($"'{field}' encodes to no tokens", "prompt");
        if (ids.Length > _positions) throw OpenAiException.Invalid($"'{field}' has {ids.Length} tokens; the model takes at most {_positions} positions", "prompt");
        return ids;
    }

    private static JsonObject Usage(IReadOnlyList<CompletionResult> results) => new()
    {
        ["prompt_tokens"] = results.Sum(r => r.PromptTokens),
        ["completion_tokens"] = results.Sum(r => r.CompletionTokens),
        ["total_tokens"] = results.Sum(r => r.PromptTokens + r.CompletionTokens),
    };

    private async Task Health(HttpContext ctx)
    {
        var status = await _session.Client.StatusAsync(TimeSpan.FromSeconds(5));
        bool ok = status.State == ClusterState.Ready;
        await Json(ctx, ok ? 200 : 503, new JsonObject { ["status"] = ok ? "ok" : "unavailable", ["state"] = status.StateName, ["detail"] = status.Detail });
    }

    private async Task Status(HttpContext ctx)
    {
        var s = await _session.Client.StatusAsync(TimeSpan.FromSeconds(5));
        await Json(ctx, 200, new JsonObject
        {
            ["model"] = _options.ModelId,
            ["state"] = s.StateName,
            ["epoch"] = s.PlanEpoch,
            ["nodes"] = new JsonArray(s.Nodes.Select(n => (JsonNode)n).ToArray()),
            ["device_map"] = ClusterSession.MapJson(s.DeviceMap),
            ["devices"] = new JsonArray(s.Devices.Select(d =>
            {
                var timing = s.Timings?.FirstOrDefault(t => t.Device == d.Device)?.Timing;
                return (JsonNode)new JsonObject
                {
                    ["device"] = d.Device, ["planned_bytes"] = d.PlannedBytes, ["loaded_bytes"] = d.LoadedBytes, ["budget_bytes"] = d.BudgetBytes, ["streamed"] = d.Streamed,
                    ["step_ms_p50"] = timing is null ? null : Math.Round(timing.StepP50Ms, 3), ["hop_ms_p50"] = timing is null ? null : Math.Round(timing.HopP50Ms, 3),
                    ["rows_per_step"] = timing is null ? null : Math.Round(timing.RowsPerStep, 2),
                };
            }).ToArray()),
            ["cluster_in_flight"] = s.InFlight,
            ["cluster_queued"] = s.Queued,
            ["active"] = _admission.Active,
            ["queued"] = _admission.Queued,
            ["recoveries"] = s.Recoveries,
            ["tokens_per_s"] = Math.Round(_rate.PerSecond(), 3),
        });
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

    /// <summary>Tokens produced over the last few seconds (for /status).</summary>
    private sealed class TokenRate
    {
        private readonly Queue<(long At, int N)> _recent = new();
        private const double Window = 5.0;

        public void Add(int n)
        {
            lock (_recent) _recent.Enqueue((Stopwatch.GetTimestamp(), n));
        }

        public double PerSecond()
        {
            lock (_recent)
            {
                while (_recent.Count > 0 && Stopwatch.GetElapsedTime(_recent.Peek().At).TotalSeconds > Window) _recent.Dequeue();
                return _recent.Sum(r => r.N) / Window;
            }
        }
    }
}
