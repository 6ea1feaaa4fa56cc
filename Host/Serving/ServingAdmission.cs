namespace ShardPipe.Host.Serving;

/// <summary>
/// The server's admission: at most <c>maxActive</c> prompts run at once (a request with a list of prompts takes a
/// slot per prompt, and asks for at most <c>maxActive</c>), at most <c>maxQueued</c> requests wait for their slots;
/// beyond both a request is refused at once with 429 (back-pressure, never unbounded memory).
/// </summary>
public sealed class ServingAdmission(int maxActive, int maxQueued)
{
    private readonly SemaphoreSlim _slots = new(maxActive, maxActive);
    private int _waiting;

    public int Active => maxActive - _slots.CurrentCount;
    public int Queued => Volatile.Read(ref _waiting);

    // Requests that need several slots gather them one at a time, one request at a time (no two half-gathered
    // requests can wait on each other).
    private readonly SemaphoreSlim _gathering = new(1, 1);

    /// <summary>The most prompts one request may carry.</summary>
    public int MaxPrompts => maxActive;

    /// <summary>
    /// <paramref name="prompts"/> slots (dispose to free them), waited for in the queue; <see cref="OpenAiException"/>
    /// 429 when the queue is full, 400 when a request asks for more prompts than may ever run at once.
    /// </summary>
    public async Task<IDisposable> EnterAsync(CancellationToken cancel, int prompts = 1)
    {
        if (prompts < 1 || prompts > maxActive)
            throw OpenAiException.Invalid($"a request may carry at most {maxActive} prompts (each runs in one of the server's {maxActive} slots); this one has {prompts}", "prompt");
        if (prompts == 1 && _slots.Wait(0)) return new Slot(_slots, 1);
        if (prompts > 1 && _gathering.Wait(0))
        {
            // All at once if they are free now; else give back what was taken and queue.
            int got = 0;
            while (got < prompts && _slots.Wait(0)) got++;
            if (got < prompts && got > 0) _slots.Release(got);
            _gathering.Release();
            if (got == prompts) return new Slot(_slots, prompts);
        }
        if (Interlocked.Increment(ref _waiting) > maxQueued)
        {
            Interlocked.Decrement(ref _waiting);
            throw OpenAiException.Busy(Active, Queued);
        }
        int taken = 0;
        try
        {
            await _gathering.WaitAsync(cancel);
            try
            {
                for (; taken < prompts; taken++) await _slots.WaitAsync(cancel);
            }
            finally { _gathering.Release(); }
            return new Slot(_slots, prompts);
        }
        catch
        {
            if (taken > 0) _slots.Release(taken);
            throw;
        }
        finally { Interlocked.Decrement(ref _waiting); }
    }

    private sealed class Slot(SemaphoreSlim slots, int count) : IDisposable
    {
        private int _released;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) slots.Release(count);
        }
    }
}
