using System.Text;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using ShardPipe.Messages;

namespace ShardPipe.Host.Serving;

/// <summary>
/// The generation endpoints: /v1/completions and /v1/chat/completions, streamed as server-sent events or not. Prompts
/// run as <see cref="Generate"/> requests through the cluster, each its own (the stages merge concurrent requests'
/// steps: continuous batching); a client that disconnects cancels its request on every stage. A chat reply with
/// tools is read for tool calls (<see cref="ToolCallParser"/>) and returned as OpenAI's tool_calls.
/// </summary>
public sealed partial class OpenAiServer
{
    private async Task Completions(HttpContext ctx)
    {
        var request = CompletionRequest.Parse(await ReadBody(ctx), _settings.MaxTokens);
        if (request.Model != _settings.ModelId) throw OpenAiException.UnknownModel(request.Model, _settings.ModelId);
        var prompts = request.Prompts.Select((p, i) => Encode(p, request.Prompts.Count > 1 ? $"prompt[{i}]" : "prompt")).ToList();
        await Run(ctx, request, prompts, null);
    }

    /// <summary>The messages rendered with the model's chat template and encoded as apply_chat_template does (<see cref="ChatPromptBuilder"/>), run as a completion of that prompt.</summary>
    private async Task ChatCompletions(HttpContext ctx)
    {
        var chat = ChatRequest.Parse(await ReadBody(ctx), _settings.MaxTokens);
        if (chat.Common.Model != _settings.ModelId) throw OpenAiException.UnknownModel(chat.Common.Model, _settings.ModelId);
        var ids = Checked(_chat.Encode(_chat.Render(chat.Input)), "messages");
        var request = chat.Common;
        // Chat's max_tokens has no fixed default: what the context leaves, within the server's cap.
        if (!chat.MaxTokensGiven) request = request with { MaxTokens = (int)Math.Max(1, Math.Min(_settings.MaxTokens, _positions - ids.Length)) };
        await Run(ctx, request, new[] { ids }, chat);
    }

    private async Task Run(HttpContext ctx, CompletionRequest request, IReadOnlyList<long[]> prompts, ChatRequest? chat)
    {
        // Prompt + max_tokens must fit the model's positions (vLLM's rule): checked before a slot is taken.
        for (int i = 0; i < prompts.Count; i++)
            if (prompts[i].Length + (long)request.MaxTokens > _positions)
                throw OpenAiException.Invalid($"the model's context is {_positions} tokens, but {(prompts.Count > 1 ? $"prompt[{i}]" : "the prompt")} has {prompts[i].Length} and max_tokens asks for {request.MaxTokens} more ({prompts[i].Length + (long)request.MaxTokens}); lower max_tokens or shorten the prompt", chat is not null ? "max_tokens" : "max_tokens");
        using var slot = await _admission.EnterAsync(ctx.RequestAborted, prompts.Count);
        var status = _settings.InjectedOutput is null ? await ReadyStatus() : null;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted);
        timeout.CancelAfter(_settings.RequestTimeout);
        try { await Respond(ctx, request, prompts, status, timeout, chat); }
        finally
        {
            // However the response ended (done, the client gone, a failed write), nothing of it keeps running: a run
            // still going is cancelled on every stage.
            timeout.Cancel();
        }
    }

    private async Task Respond(HttpContext ctx, CompletionRequest request, IReadOnlyList<long[]> prompts, ClusterStatus? status,
        CancellationTokenSource timeout, ChatRequest? chat)
    {
        bool tools = chat?.ParsesToolCalls == true;
        string? forced = chat is { ForcedFunction: true } ? chat.ToolChoice : null;
        var shapes = new OpenAiShapes((chat is not null ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N"), _settings.ModelId,
            DateTimeOffset.UtcNow.ToUnixTimeSeconds(), chat is not null);

        if (!request.Stream)
        {
            var results = await RunAll(prompts, request, status, null, timeout, ctx.RequestAborted, tools);
            var choices = new JsonArray(results.Select((r, i) =>
            {
                if (!tools) return (JsonNode)shapes.Choice(i, r.Text, r.FinishReason);
                var parsed = ToolCallParser.Parse(r.Text, forced);
                return parsed.Calls.Count > 0 ? shapes.Choice(i, parsed.Content, "tool_calls", parsed.Calls) : shapes.Choice(i, r.Text, r.FinishReason);
            }).ToArray());
            var response = shapes.Envelope(choices, chunk: false);
            response["usage"] = OpenAiShapes.Usage(results);
            await Json(ctx, 200, response);
            return;
        }

        // Server-sent events: (chat: a first delta with the role) one event per released piece, then each choice's
        // finish, usage if asked, and [DONE]. With tools, text that may open a tool call is held back; at the end the
        // calls go out as one tool_calls delta and the finish is "tool_calls".
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        var events = System.Threading.Channels.Channel.CreateUnbounded<JsonObject>(new() { SingleReader = true });
        var held = prompts.Select(_ => new StringBuilder()).ToArray();
        var shown = new int[prompts.Count];
        if (chat is not null) for (int i = 0; i < prompts.Count; i++) events.Writer.TryWrite(shapes.Chunk(i, null, null, first: true));
        void OnPiece(int i, string piece)
        {
            if (!tools) { events.Writer.TryWrite(shapes.Chunk(i, piece, null)); return; }
            lock (held[i])
            {
                held[i].Append(piece);
                string all = held[i].ToString();
                int safe = ToolCallParser.SafeContentLength(all);
                if (safe > shown[i]) { events.Writer.TryWrite(shapes.Chunk(i, all[shown[i]..safe], null)); shown[i] = safe; }
            }
        }
        var run = RunAll(prompts, request, status, OnPiece, timeout, ctx.RequestAborted, tools)
            .ContinueWith(t => { events.Writer.TryComplete(); return t; }, TaskScheduler.Default).Unwrap();
        await ctx.Response.StartAsync(ctx.RequestAborted);
        await foreach (var e in events.Reader.ReadAllAsync(ctx.RequestAborted)) await Event(ctx, e.ToJsonString());
        try
        {
            var results = await run;
            for (int i = 0; i < results.Count; i++)
            {
                string finish = results[i].FinishReason;
                if (tools)
                {
                    string all = held[i].ToString();
                    var parsed = ToolCallParser.Parse(all, forced);
                    if (parsed.Calls.Count > 0)
                    {
                        await Event(ctx, shapes.Chunk(i, null, null, calls: parsed.Calls).ToJsonString());
                        finish = "tool_calls";
                    }
                    else if (shown[i] < all.Length) await Event(ctx, shapes.Chunk(i, all[shown[i]..], null).ToJsonString());
                }
                await Event(ctx, shapes.Chunk(i, null, finish).ToJsonString());
            }
            if (request.IncludeUsage)
            {
                var usage = shapes.Envelope(new JsonArray(), chunk: true);
                usage["usage"] = OpenAiShapes.Usage(results);
                await Event(ctx, usage.ToJsonString());
            }
        }
        catch (Exception ex) when (!ctx.RequestAborted.IsCancellationRequested && Classify(ex) is { } error)
        {
            _log.LogWarning("stream ended with an error: {Message}", error.Message);
            await Event(ctx, error.Body().ToJsonString());
        }
        await Event(ctx, "[DONE]");
    }

    /// <summary>Every prompt of a request, concurrently (each its own pipeline request); a timeout is an error naming it.</summary>
    private async Task<IReadOnlyList<CompletionResult>> RunAll(IReadOnlyList<long[]> prompts, CompletionRequest request, ClusterStatus? status,
        Action<int, string>? onPiece, CancellationTokenSource timeout, CancellationToken aborted, bool keepSpecialTokens)
    {
        try
        {
            if (_settings.InjectedOutput is { } inject) return prompts.Select((ids, i) => Injected(inject, ids, piece => onPiece?.Invoke(i, piece))).ToList();
            return await Task.WhenAll(prompts.Select((ids, i) =>
                _runner.RunAsync(ids, request, status!.Stages, piece => onPiece?.Invoke(i, piece), timeout.Token, keepSpecialTokens)));
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !aborted.IsCancellationRequested)
        {
            throw new OpenAiException(504, $"the request did not finish within {_settings.RequestTimeout.TotalSeconds:0} s (--request-timeout)", "timeout");
        }
    }

    /// <summary>The test hook's reply (<see cref="ServeSettings.InjectedOutput"/>), released in pieces of 3 characters as a model's tokens would be.</summary>
    private CompletionResult Injected(Func<string, string> inject, long[] ids, Action<string> onPiece)
    {
        string text = inject(_tokenizer.Decode(ids));
        for (int at = 0; at < text.Length; at += 3) onPiece(text.Substring(at, Math.Min(3, text.Length - at)));
        return new CompletionResult(text, "stop", ids.Length, (text.Length + 2) / 3);
    }

    private long[] Encode(PromptInput p, string field) =>
        Checked(p.Ids ?? _tokenizer.Encode(p.Text!).Ids.Select(i => (long)i).ToArray(), field);

    private long[] Checked(long[] ids, string field)
    {
        if (ids.Length == 0) throw OpenAiException.Invalid($"'{field}' encodes to no tokens", field == "messages" ? "messages" : "prompt");
        if (ids.Length > _positions) throw OpenAiException.Invalid($"'{field}' has {ids.Length} tokens; the model takes at most {_positions} positions", field == "messages" ? "messages" : "prompt");
        for (int i = 0; i < ids.Length; i++)
            if (ids[i] < 0 || ids[i] >= _settings.VocabSize)
                throw OpenAiException.Invalid($"'{field}' token {i} is {ids[i]}, outside the model's vocabulary (0..{_settings.VocabSize - 1})", field == "messages" ? "messages" : "prompt");
        return ids;
    }
}
