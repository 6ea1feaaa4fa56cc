namespace ShardPipe.Host.Serving;

/// <summary>
/// OpenAI's <c>stop</c> strings over streamed text: pieces pass through, except the tail that could still be the
/// start of a stop string, which is held back until it cannot. When a stop string appears, the text before it is
/// released and the stream ends (the stop string itself is never returned, as the API specifies).
/// </summary>
public sealed class StopMatcher(IReadOnlyList<string> stops)
{
    private readonly int _hold = stops.Count == 0 ? 0 : stops.Max(s => s.Length) - 1;
    private string _pending = "";

    public bool Stopped { get; private set; }

    /// <summary>The text that can be released after <paramref name="piece"/>; sets <see cref="Stopped"/> when a stop string appeared.</summary>
    public string Add(string piece)
    {
        if (Stopped) return "";
        _pending += piece;
        int at = -1;
        foreach (var s in stops)
        {
            int i = _pending.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (at < 0 || i < at)) at = i;
        }
        if (at >= 0)
        {
            Stopped = true;
            string before = _pending[..at];
            _pending = "";
            return before;
        }
        int release = Math.Max(0, _pending.Length - _hold);
        // Never split a surrogate pair between what is released and what is held.
        if (release > 0 && release < _pending.Length && char.IsHighSurrogate(_pending[release - 1])) release--;
        string ready = _pending[..release];
        _pending = _pending[release..];
        return ready;
    }

    /// <summary>What is held back, once the stream has ended without a stop string.</summary>
    public string Flush()
    {
        if (Stopped) return "";
        string rest = _pending;
        _pending = "";
        return rest;
    }
}
