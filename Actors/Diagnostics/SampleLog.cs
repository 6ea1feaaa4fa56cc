namespace ShardPipe.Actors.Diagnostics;

/// <summary>Diagnostic samples gathered across threads (bounded) and taken by a benchmark.</summary>
public sealed class SampleLog<T>
{
    private const int Limit = 100_000;
    private readonly System.Collections.Concurrent.ConcurrentQueue<T> _samples = new();

    public void Record(T sample)
    {
        if (_samples.Count < Limit) _samples.Enqueue(sample);
    }

    /// <summary>Takes every sample recorded so far.</summary>
    public List<T> Drain()
    {
        var all = new List<T>();
        while (_samples.TryDequeue(out var x)) all.Add(x);
        return all;
    }
}
