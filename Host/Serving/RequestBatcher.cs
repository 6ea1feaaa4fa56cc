using System.Threading.Channels;
using ShardPipe.Messages;

namespace ShardPipe.Host.Serving;

/// <summary>
/// Request batching in the server: greedy prompts that arrive within <c>window</c> of each other (from any clients)
/// run as the rows of one pipeline request (<see cref="CompletionRunner.RunBatchAsync"/>), so each step reads the
/// weights once for all of them. Rows are grouped by <c>ignore_eos</c>; sampled prompts run alone (a row's draws must
/// not depend on its batch). This is batching at admission, not continuous batching: a prompt that arrives while a
/// batch runs starts the next batch (both then interleave in the pipeline); a row that ends early stops streaming but
/// its batch runs on until every row has ended.
/// </summary>
public sealed class RequestBatcher : IAsyncDisposable
{
    private sealed record Pending(CompletionRow Row, IReadOnlyList<StageInfo> Stages, TaskCompletionSource<CompletionResult> Done);

    private readonly CompletionRunner _runner;
    private readonly TimeSpan _window;
    private readonly int _maxRows;
    private readonly Channel<Pending> _queue = Channel.CreateUnbounded<Pending>(new() { SingleReader = true });
    private readonly Task _loop;

    public RequestBatcher(CompletionRunner runner, TimeSpan window, int maxRows)
    {
        _runner = runner;
        _window = window;
        _maxRows = Math.Max(1, maxRows);
        _loop = Task.Run(Loop);
    }

    public Task<CompletionResult> Submit(CompletionRow row, IReadOnlyList<StageInfo> stages)
    {
        if (!row.Request.Greedy || _window <= TimeSpan.Zero || _maxRows == 1)
            return _runner.RunAsync(row.PromptIds, row.Request, stages, row.OnPiece, row.Cancel);
        var done = new TaskCompletionSource<CompletionResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (!_queue.Writer.TryWrite(new Pending(row, stages, done))) done.SetException(new ObjectDisposedException(nameof(RequestBatcher)));
        return done.Task;
    }

    private async Task Loop()
    {
        var reader = _queue.Reader;
        while (await reader.WaitToReadAsync())
        {
            await Task.Delay(_window); // let the prompts that arrive together gather
            var taken = new List<Pending>();
            while (taken.Count < _maxRows * 4 && reader.TryRead(out var p)) taken.Add(p);
            foreach (var group in taken.Where(p => !p.Row.Cancel.IsCancellationRequested).GroupBy(p => p.Row.Request.IgnoreEos))
                foreach (var batch in group.Chunk(_maxRows))
                    _ = Run(batch);
            foreach (var p in taken.Where(p => p.Row.Cancel.IsCancellationRequested)) p.Done.TrySetCanceled(p.Row.Cancel);
        }
    }

    private async Task Run(Pending[] batch)
    {
        try
        {
            // The batch as a whole is cancelled only when every row's client has gone (RunBatchAsync ends rows one by one).
            var results = await _runner.RunBatchAsync(batch.Select(p => p.Row).ToList(), batch[0].Stages, CancellationToken.None);
            for (int i = 0; i < batch.Length; i++)
            {
                if (batch[i].Row.Cancel.IsCancellationRequested) batch[i].Done.TrySetCanceled(batch[i].Row.Cancel);
                else batch[i].Done.TrySetResult(results[i]);
            }
        }
        catch (Exception ex)
        {
            foreach (var p in batch)
                if (p.Row.Cancel.IsCancellationRequested) p.Done.TrySetCanceled(p.Row.Cancel);
                else p.Done.TrySetException(ex);
        }
    }

    public async ValueTask DisposeAsync()
    {
        _queue.Writer.TryComplete();
        await _loop;
    }
}
