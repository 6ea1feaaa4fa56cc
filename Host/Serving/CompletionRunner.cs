using System.Text;
using ShardPipe.Actors.Client;
using ShardPipe.Messages;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Serving;

/// <summary>What one prompt's completion produced.</summary>
public sealed record CompletionResult(string Text, string FinishReason, int PromptTokens, int CompletionTokens)
{
    /// <summary>Speculative decoding (null when off): draft tokens proposed and accepted for this prompt.</summary>
    public (int Proposed, int Accepted)? Speculation { get; init; }
}

/// <summary>
/// Runs one prompt on the cluster as its own <see cref="Generate"/> request — the stages merge the steps of concurrent
/// requests themselves (continuous batching), so a request joins and leaves the running batch between steps — and turns
/// its tokens into text as they stream: decoded incrementally (<see cref="StreamingDecoder"/>, special tokens skipped,
/// an incomplete UTF-8 sequence held until it completes), passed through the stop strings (<see cref="StopMatcher"/>),
/// each released piece handed to <c>onPiece</c>. It ends at max_tokens, eos or a stop string; a stop string (or the
/// client going) before the pipeline would stop by itself cancels the request on every stage. The text equals
/// <c>generate --prompt … --json</c>'s <c>text[0]</c> for the same request when no stop string cuts it.
/// </summary>
/// <param name="prefillChunk">Positions of a long prompt prefilled per step (0 = all at once).</param>
public sealed class CompletionRunner(ShardPipeClient client, ModelTokenizer tokenizer, IReadOnlySet<long> eos, TimeSpan stallTimeout, int prefillChunk,
    Action? onToken = null, ServingMetrics? metrics = null, SpeculationSettings? speculate = null)
{
    /// <param name="keepSpecialTokens">Decode special tokens too (tool-call markers such as [TOOL_CALLS] are special), except eos.</param>
    public async Task<CompletionResult> RunAsync(long[] promptIds, CompletionRequest request, IReadOnlyList<StageInfo> stages,
        Action<string>? onPiece, CancellationToken cancel, bool keepSpecialTokens = false)
    {
        var sampling = new SamplingSettings(request.Greedy, request.Temperature, 0, request.TopP, request.Seed ?? Random.Shared.NextInt64(1, long.MaxValue));
        var generate = new Generate("srv-" + Guid.NewGuid().ToString("N"), new[] { promptIds }, null, request.MaxTokens, request.IgnoreEos, sampling,
            PrefillChunk: prefillChunk, Speculate: speculate);
        var decoder = tokenizer.Stream(skipSpecialTokens: !keepSpecialTokens);
        var stops = new StopMatcher(request.Stop);
        var text = new StringBuilder();
        int count = 0;
        double lastAt = 0;
        (int Proposed, int Accepted) counts = (0, 0);
        string? ended = null; // "stop" (a stop string), "eos" or "length"
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var stopped = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        void Release(string ready)
        {
            if (ready.Length == 0) return;
            text.Append(ready);
            onPiece?.Invoke(ready);
        }
        // Called on the request's actor thread, one step (one token) at a time.
        void OnTokens(long[] tokens)
        {
            if (ended is not null) return;
            count++;
            double now = clock.Elapsed.TotalSeconds;
            onToken?.Invoke();
            if (count == 1) metrics?.FirstToken(now);
            else metrics?.NextToken(now - lastAt);
            lastAt = now;
            bool isEos = eos.Contains(tokens[0]);
            if (!(keepSpecialTokens && isEos && !request.IgnoreEos)) Release(stops.Add(decoder.Add(new[] { tokens[0] })));
            if (stops.Stopped)
            {
                ended = "stop";
                if (count < request.MaxTokens) stopped.Cancel(); // the pipeline would run on: end it on every stage
            }
            else if (ShardPipe.Modeling.Generation.DecodeRule.EndsRow(tokens[0], eos, request.IgnoreEos)) ended = "eos";
            else if (count >= request.MaxTokens) ended = "length";
        }
        try
        {
            var outcome = await client.RunAsync(generate, stages, stallTimeout, OnTokens, stopped.Token);
            counts = (outcome.Proposed, outcome.Accepted);
        }
        catch (OperationCanceledException) when (!cancel.IsCancellationRequested && ended == "stop") { } // it had what it needed
        if (ended != "stop")
        {
            Release(stops.Add(decoder.Flush()));
            Release(stops.Flush());
        }
        metrics?.Tokens(promptIds.Length, count);
        string finish = stops.Stopped || ended == "eos" || count < request.MaxTokens ? "stop" : "length";
        return new CompletionResult(text.ToString(), finish, promptIds.Length, count) { Speculation = speculate is null ? null : counts };
    }
}
