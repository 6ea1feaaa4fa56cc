namespace ShardPipe.Host.Serving;

/// <summary>
/// The server's admission: at most <c>maxActive</c> requests run at once, at most <c>maxQueued</c> wait for a slot;
/// beyond both a request is refused at once with 429 (back-pressure, never unbounded memory).
/// </summary>
public sealed class ServingAdmission(int maxActive, int maxQueued)
{
    private readonly SemaphoreSlim _slots = new(maxActive, maxActive);
    private int _waiting;

    public int Active => maxActive - _slots.CurrentCount;
    public int Queued => Volatile.Read(ref _waiting);

    /// <summary>A slot (dispose to free it), waited for in the queue; <see cref="OpenAiException"/> 429 when the queue is full.</summary>
    public async Task<IDisposable> EnterAsync(CancellationToken cancel)
    {
        if (!_slots.Wait(0))
        {
            if (Interlocked.Increment(ref _waiting) > maxQueued)
            {
                Interlocked.Decrement(ref _waiting);
                throw OpenAiException.Busy(Active, Queued);
            }
            try { await _slots.WaitAsync(cancel); }
            finally { Interlocked.Decrement(ref _waiting); }
        }
        return new Slot(_slots);
    }

    private sealed class Slot(SemaphoreSlim slots) : IDisposable
    {
        private int _released;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) slots.Release();
        }
    }
}
