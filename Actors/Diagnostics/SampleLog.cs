namespace ShardPipe.Actors.Diagnostics;

/// <summary>
/// Diagnostic samples gathered across threads: a bounded log taken by a benchmark (<see cref="Drain"/>), and the
/// last <see cref="Window"/> samples kept apart for what a node reports while it runs (<see cref="Recent"/>).
/// </summary>
public sealed class SampleLog<T>
{
    private const int Limit = 100_000;
    public const int Window = 256;
    private readonly System.Collections.Concurrent.ConcurrentQueue<T> _samples = new();
    private readonly T[] _recent = new T[Window];
    private long _count;

    /// <summary>Samples recorded since the node started.</summary>
    public long Count => Interlocked.Read(ref _count);

    public void Record(T sample)
    {
        if (_samples.Count < Limit) _samples.Enqueue(sample);
        lock (_recent) _recent[(int)(_count++ % Window)] = sample;
    }

    /// <summary>The last samples (at most <see cref="Window"/>), oldest first; the log itself is untouched.</summary>
    public List<T> Recent()
    {
        lock (_recent)
        {
            int n = (int)Math.Min(_count, Window);
            var list = new List<T>(n);
            for (long i = _count - n; i < _count; i++) list.Add(_recent[(int)(i % Window)]);
            return list;
        }
    }

    /// <summary>Takes every sample recorded so far.</summary>
    public List<T> Drain()
    {
        var all = new List<T>();
        while (_samples.TryDequeue(out var x)) all.Add(x);
        return all;
    }
}
