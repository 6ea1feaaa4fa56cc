using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>What admission decides for a request.</summary>
public enum Admission { Start, Queue, Busy, NoModel, Recovering, Starting, Duplicate }

/// <summary>
/// Admission, without the actor: at most max-in-flight requests in the pipeline and max-queued waiting (beyond both, a
/// request is refused at once), each with the caller it answers to. Callers are opaque here (the actor's references),
/// so that a caller that goes away cancels its requests and withdraws its queued ones. Pure.
/// </summary>
public sealed class AdmissionQueue<TRequest, TCaller> where TCaller : notnull
{
    private readonly int _maxInFlight, _maxQueued;
    private readonly Dictionary<string, (DateTime Since, TCaller Caller)> _inFlight = new(StringComparer.Ordinal);
    private readonly List<(string Id, TRequest Request, TCaller Caller)> _queued = new();

    public AdmissionQueue(int maxInFlight, int maxQueued)
    {
        _maxInFlight = maxInFlight;
        _maxQueued = maxQueued;
    }

    public int InFlight => _inFlight.Count;
    public int Queued => _queued.Count;

    /// <summary>Start now (counted in flight), queue, or refuse — in <paramref name="state"/>, only a ready model admits.</summary>
    public Admission Admit(string id, TRequest request, TCaller caller, ClusterState state, DateTime now)
    {
        switch (state)
        {
            case ClusterState.Starting: return Admission.Starting;
            case ClusterState.Recovering or ClusterState.Degraded: return Admission.Recovering;
            case not ClusterState.Ready: return Admission.NoModel;
        }
        // Ids name requests on every stage (caches, releases): a second request under a running or queued id is refused.
        if (_inFlight.ContainsKey(id) || _queued.Any(q => q.Id == id)) return Admission.Duplicate;
        if (_inFlight.Count < _maxInFlight)
        {
            _inFlight[id] = (now, caller);
            return Admission.Start;
        }
        if (_queued.Count >= _maxQueued) return Admission.Busy;
        _queued.Add((id, request, caller));
        return Admission.Queue;
    }

    /// <summary>
    /// A request ended (done, failed, cancelled): its slot is free. Returns its caller when that has nothing else here
    /// (no longer to be watched), and the queued requests that start now, while <paramref name="state"/> is ready.
    /// </summary>
    public (TCaller? IdleCaller, IReadOnlyList<(string Id, TRequest Request, TCaller Caller)> Next) Finish(string id, ClusterState state, DateTime now)
    {
        if (!_inFlight.Remove(id, out var ended)) return (default, Array.Empty<(string, TRequest, TCaller)>());
        return (Holds(ended.Caller) ? default : ended.Caller, Drain(state, now));
    }

    /// <summary>Queued requests that start now (counted in flight): after a request ended, or once the model is served again.</summary>
    public IReadOnlyList<(string Id, TRequest Request, TCaller Caller)> Drain(ClusterState state, DateTime now)
    {
        var start = new List<(string, TRequest, TCaller)>();
        while (state == ClusterState.Ready && _inFlight.Count < _maxInFlight && _queued.Count > 0)
        {
            var next = _queued[0];
            _queued.RemoveAt(0);
            _inFlight[next.Id] = (now, next.Caller);
            start.Add(next);
        }
        return start;
    }

    /// <summary>
    /// A caller went away: returns its requests in flight (to cancel on every stage; still counted until
    /// <see cref="Finish"/>) and drops its queued ones (they never started), returning their ids.
    /// </summary>
    public (IReadOnlyList<string> Running, IReadOnlyList<string> Withdrawn) CallerGone(TCaller caller)
    {
        var running = _inFlight.Where(kv => kv.Value.Caller.Equals(caller)).Select(kv => kv.Key).ToList();
        var withdrawn = _queued.Where(q => q.Caller.Equals(caller)).Select(q => q.Id).ToList();
        _queued.RemoveAll(q => q.Caller.Equals(caller));
        return (running, withdrawn);
    }

    /// <summary>
    /// The model lost stages: requests in flight are dropped (returned, so their callers learn now and resume them once
    /// it is back); queued ones keep waiting.
    /// </summary>
    public IReadOnlyList<(string Id, TCaller Caller)> Interrupt()
    {
        var running = _inFlight.Select(kv => (kv.Key, kv.Value.Caller)).ToList();
        _inFlight.Clear();
        return running;
    }

    /// <summary>The model is gone: everything is dropped; returns the queued requests (they never started; in-flight ones fail by themselves).</summary>
    public IReadOnlyList<(string Id, TCaller Caller)> Clear()
    {
        var queued = _queued.Select(q => (q.Id, q.Caller)).ToList();
        _queued.Clear();
        _inFlight.Clear();
        return queued;
    }

    private bool Holds(TCaller caller) => _inFlight.Values.Any(v => v.Caller.Equals(caller)) || _queued.Any(q => q.Caller.Equals(caller));
}
