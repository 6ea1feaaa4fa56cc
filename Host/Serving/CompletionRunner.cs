using System.Text;
using ShardPipe.Actors.Client;
using ShardPipe.Messages;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Serving;

/// <summary>What one prompt's completion produced.</summary>
public sealed record CompletionResult(string Text, string FinishReason, int PromptTokens, int CompletionTokens);

/// <summary>
/// Runs one prompt on the cluster as a <see cref="Generate"/> request and turns its tokens into text as it streams:
/// decoded incrementally (<see cref="StreamingDecoder"/>, special tokens skipped, an incomplete UTF-8 sequence held
/// until it completes), passed through the stop strings (<see cref="StopMatcher"/>; a stop cancels the request on
/// every stage), each released piece handed to <c>onPiece</c>. The pieces join to exactly the final text, which
/// equals <c>generate --prompt … --json</c>'s <c>text[0]</c> for the same request when no stop string cuts it.
/// </summary>
public sealed class CompletionRunner(ShardPipeClient client, ModelTokenizer tokenizer, IReadOnlySet<long> eos, TimeSpan stallTimeout, Action? onToken = null,
    ServingMetrics? metrics = null)
{
    public async Task<CompletionResult> RunAsync(long[] promptIds, CompletionRequest request, IReadOnlyList<StageInfo> stages,
        Action<string>? onPiece, CancellationToken cancel)
    {
        var sampling = new SamplingSettings(request.Greedy, request.Temperature, 0, request.TopP, request.Seed ?? Random.Shared.NextInt64(1, long.MaxValue));
        var generate = new Generate("srv-" + Guid.NewGuid().ToString("N"), new[] { promptIds }, null, request.MaxTokens, request.IgnoreEos, sampling);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        double lastAt = 0;
        var decoder = tokenizer.Stream(skipSpecialTokens: true);
        var stops = new StopMatcher(request.Stop);
        var text = new StringBuilder();
        int count = 0;
        long last = -1;
        using var stopped = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        void Release(string ready)
        {
            if (ready.Length == 0) return;
            text.Append(ready);
            onPiece?.Invoke(ready);
        }
        // Called on the request's actor thread, one step at a time.
        void OnTokens(long[] tokens)
        {
            if (stops.Stopped) return;
            count++;
            last = tokens[0];
            onToken?.Invoke();
            double now = clock.Elapsed.TotalSeconds;
            if (count == 1) metrics?.FirstToken(now);
            else metrics?.NextToken(now - lastAt);
            lastAt = now;
            Release(stops.Add(decoder.Add(tokens)));
            if (stops.Stopped) stopped.Cancel();
        }
        try
        {
            await client.RunAsync(generate, stages, stallTimeout, OnTokens, stopped.Token);
        }
        catch (OperationCanceledException) when (stops.Stopped && !cancel.IsCancellationRequested) { } // a stop string ended it
        if (!stops.Stopped)
        {
            Release(stops.Add(decoder.Flush()));
            Release(stops.Flush());
        }
        string finish = stops.Stopped || count < request.MaxTokens || !request.IgnoreEos && eos.Contains(last) ? "stop" : "length";
        metrics?.Tokens(promptIds.Length, count);
        return new CompletionResult(text.ToString(), finish, promptIds.Length, count);
    }
}
