using System.Text;
using ShardPipe.Actors.Client;
using ShardPipe.Messages;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Serving;

/// <summary>What one prompt's completion produced.</summary>
public sealed record CompletionResult(string Text, string FinishReason, int PromptTokens, int CompletionTokens);

/// <summary>One prompt to complete, with where its text goes and its client's cancellation.</summary>
public sealed record CompletionRow(long[] PromptIds, CompletionRequest Request, Action<string>? OnPiece, CancellationToken Cancel);

/// <summary>
/// Runs prompts on the cluster as one <see cref="Generate"/> request — one row each, left-padded to the longest with
/// its attention mask, as Hugging Face batches prompts — and turns each row's tokens into text as it streams: decoded
/// incrementally (<see cref="StreamingDecoder"/>, special tokens skipped, an incomplete UTF-8 sequence held until it
/// completes), passed through the row's stop strings (<see cref="StopMatcher"/>), each released piece handed to the
/// row's <c>onPiece</c>. A row ends at its own max_tokens, eos or stop string; when every row has ended (or every
/// client has gone) before the pipeline would stop by itself, the request is cancelled on every stage. Rows of one
/// request share its sampling settings (the server batches only greedy requests). A row's text equals
/// <c>generate --prompt … --json</c>'s <c>text[0]</c> for the same request when no stop string cuts it.
/// </summary>
public sealed class CompletionRunner(ShardPipeClient client, ModelTokenizer tokenizer, IReadOnlySet<long> eos, TimeSpan stallTimeout, Action? onToken = null,
    ServingMetrics? metrics = null)
{
    private sealed class Row(CompletionRow row, ModelTokenizer tokenizer)
    {
        public readonly CompletionRow Input = row;
        public readonly StreamingDecoder Decoder = tokenizer.Stream(skipSpecialTokens: true);
        public readonly StopMatcher Stops = new(row.Request.Stop);
        public readonly StringBuilder Text = new();
        public int Count;
        public long Last = -1;
        public double LastAt;
        /// <summary>Why the row ended: null while it runs; "eos", "length", "stop" (a stop string) or "gone" (its client).</summary>
        public string? Ended;

        public void Release(string ready)
        {
            if (ready.Length == 0) return;
            Text.Append(ready);
            Input.OnPiece?.Invoke(ready);
        }
    }

    public async Task<CompletionResult> RunAsync(long[] promptIds, CompletionRequest request, IReadOnlyList<StageInfo> stages,
        Action<string>? onPiece, CancellationToken cancel) =>
        (await RunBatchAsync(new[] { new CompletionRow(promptIds, request, onPiece, cancel) }, stages, cancel))[0];

    public async Task<IReadOnlyList<CompletionResult>> RunBatchAsync(IReadOnlyList<CompletionRow> inputs, IReadOnlyList<StageInfo> stages, CancellationToken cancel)
    {
        var first = inputs[0].Request;
        var sampling = new SamplingSettings(first.Greedy, first.Temperature, 0, first.TopP, first.Seed ?? Random.Shared.NextInt64(1, long.MaxValue));
        int width = inputs.Max(r => r.PromptIds.Length), maxNew = inputs.Max(r => r.Request.MaxTokens);
        long pad = eos.Count > 0 ? eos.Min() : 0;
        var ids = inputs.Select(r => Enumerable.Repeat(pad, width - r.PromptIds.Length).Concat(r.PromptIds).ToArray()).ToArray();
        var mask = inputs.Count == 1 ? null
            : inputs.Select(r => Enumerable.Repeat(0L, width - r.PromptIds.Length).Concat(Enumerable.Repeat(1L, r.PromptIds.Length)).ToArray()).ToArray();
        var generate = new Generate("srv-" + Guid.NewGuid().ToString("N"), ids, mask, maxNew, first.IgnoreEos, sampling);
        var rows = inputs.Select(r => new Row(r, tokenizer)).ToArray();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        int steps = 0;
        using var stopped = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var gate = new object();
        // Ends the pipeline's request early once no row needs it: every row ended, and not all of them by the rules the
        // pipeline stops at by itself (every row at eos, or the last step) — those end it without a cancellation.
        void CancelIfAllEnded()
        {
            if (rows.All(r => r.Ended is not null) && steps < maxNew && !(rows.All(r => r.Ended == "eos") && !first.IgnoreEos))
                stopped.Cancel();
        }
        var registrations = rows.Select(r => r.Input.Cancel.Register(() =>
        {
            lock (gate)
            {
                r.Ended ??= "gone";
                CancelIfAllEnded();
            }
        })).ToList();
        // Called on the request's actor thread, one step (a token per row) at a time.
        void OnTokens(long[] tokens)
        {
            lock (gate)
            {
                steps++;
                double now = clock.Elapsed.TotalSeconds;
                metrics?.RowsPerStep(rows.Count(r => r.Ended is null));
                for (int b = 0; b < rows.Length; b++)
                {
                    var r = rows[b];
                    if (r.Ended is not null) continue;
                    r.Count++;
                    r.Last = tokens[b];
                    onToken?.Invoke();
                    if (r.Count == 1) metrics?.FirstToken(now);
                    else metrics?.NextToken(now - r.LastAt);
                    r.LastAt = now;
                    r.Release(r.Stops.Add(r.Decoder.Add(new[] { tokens[b] })));
                    if (r.Stops.Stopped) r.Ended = "stop";
                    else if (!first.IgnoreEos && eos.Contains(r.Last)) r.Ended = "eos";
                    else if (r.Count >= r.Input.Request.MaxTokens) r.Ended = "length";
                }
                CancelIfAllEnded();
            }
        }
        try
        {
            await client.RunAsync(generate, stages, stallTimeout, OnTokens, stopped.Token);
        }
        catch (OperationCanceledException) when (!cancel.IsCancellationRequested && rows.All(r => r.Ended is not null)) { } // every row had what it needed
        finally
        {
            foreach (var reg in registrations) reg.Dispose();
        }
        if (rows.All(r => r.Ended == "gone")) throw new OperationCanceledException(cancel);
        return rows.Select(r =>
        {
            if (r.Ended is not ("stop" or "gone"))
            {
                r.Release(r.Stops.Add(r.Decoder.Flush()));
                r.Release(r.Stops.Flush());
            }
            metrics?.Tokens(r.Input.PromptIds.Length, r.Count);
            string finish = r.Stops.Stopped || r.Ended == "eos" || r.Count < r.Input.Request.MaxTokens ? "stop" : "length";
            return new CompletionResult(r.Text.ToString(), finish, r.Input.PromptIds.Length, r.Count);
        }).ToList();
    }
}
