using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>What admission decides for a request.</summary>
public enum Admission { Start, Queue, Busy, NoModel, Recovering, Starting, Duplicate, NeverFits }

/// <summary>
/// Admission, without the actor: at most max-in-flight requests in the pipeline and max-queued waiting (beyond both, a
/// request is refused at once), each with the caller it answers to. With KV budgets set (<see cref="SetKvBudgets"/>),
/// a request also reserves its worst case of KV-cache bytes on each device (rows × (prompt + max new tokens) × bytes
/// per token there) and starts only when every device's reservations fit its budget — else it waits in the queue; one
/// that could never fit alone is refused. Callers are opaque here (the actor's references),
/// so that a caller that goes away cancels its requests and withdraws its queued ones. Pure.
/// </summary>
public sealed class AdmissionQueue<TRequest, TCaller> where TCaller : notnull
{
    private readonly int _maxInFlight, _maxQueued;
    private readonly Dictionary<string, (DateTime Since, TCaller Caller)> _inFlight = new(StringComparer.Ordinal);
    private readonly List<(string Id, TRequest Request, TCaller Caller)> _queued = new();
    private readonly Dictionary<string, IReadOnlyDictionary<string, long>> _demand = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _reserved = new(StringComparer.Ordinal);
    private IReadOnlyDictionary<string, long> _budgets = new Dictionary<string, long>();
    private readonly Dictionary<string, IReadOnlyDictionary<string, long>> _queuedDemand = new(StringComparer.Ordinal);

    /// <summary>KV-cache bytes each device may hold for requests (none set: no KV limit). Set when a model is served.</summary>
    public void SetKvBudgets(IReadOnlyDictionary<string, long> budgets) => _budgets = budgets;

    /// <summary>KV-cache bytes admitted requests reserve on a device now.</summary>
    public long Reserved(string device) => _reserved.GetValueOrDefault(device);

    private bool Fits(IReadOnlyDictionary<string, long>? demand) =>
        demand is null || demand.All(d => !_budgets.TryGetValue(d.Key, out long b) || _reserved.GetValueOrDefault(d.Key) + d.Value <= b);

    private bool FitsAlone(IReadOnlyDictionary<string, long>? demand) =>
        demand is null || demand.All(d => !_budgets.TryGetValue(d.Key, out long b) || d.Value <= b);

    /// <summary>Why a request's worst case could never fit (the device and its figures), or null.</summary>
    public string? NeverFitsReason(IReadOnlyDictionary<string, long>? demand) => demand?
        .Where(d => _budgets.TryGetValue(d.Key, out long b) && d.Value > b)
        .Select(d => $"its worst-case KV cache needs {d.Value} bytes on {d.Key}, whose KV budget is {_budgets[d.Key]} bytes")
        .FirstOrDefault();

    private void Reserve(string id, IReadOnlyDictionary<string, long>? demand)
    {
        if (demand is null) return;
        _demand[id] = demand;
        foreach (var (device, bytes) in demand) _reserved[device] = _reserved.GetValueOrDefault(device) + bytes;
    }

    private void Unreserve(string id)
    {
        if (!_demand.Remove(id, out var demand)) return;
        foreach (var (device, bytes) in demand) _reserved[device] = _reserved.GetValueOrDefault(device) - bytes;
    }

    public AdmissionQueue(int maxInFlight, int maxQueued)
    {
        _maxInFlight = maxInFlight;
        _maxQueued = maxQueued;
    }

    public int InFlight => _inFlight.Count;
    public int Queued => _queued.Count;

    /// <summary>Start now (counted in flight), queue, or refuse — in <paramref name="state"/>, only a ready model admits.</summary>
    public Admission Admit(string id, TRequest request, TCaller caller, ClusterState state, DateTime now, IReadOnlyDictionary<string, long>? kvDemand = null)
    {
        switch (state)
        {
            case ClusterState.Starting: return Admission.Starting;
            case ClusterState.Recovering or ClusterState.Degraded or ClusterState.Moving: return Admission.Recovering;
            case not ClusterState.Ready: return Admission.NoModel;
        }
        // Ids name requests on every stage (caches, releases): a second request under a running or queued id is refused.
        if (_inFlight.ContainsKey(id) || _queued.Any(q => q.Id == id)) return Admission.Duplicate;
        if (!FitsAlone(kvDemand)) return Admission.NeverFits;
        // With KV budgets, a newcomer does not overtake a queued request waiting for room.
        if (_inFlight.Count < _maxInFlight && (_budgets.Count == 0 || _queued.Count == 0) && Fits(kvDemand))
        {
            _inFlight[id] = (now, caller);
            Reserve(id, kvDemand);
            return Admission.Start;
        }
        if (_queued.Count >= _maxQueued) return Admission.Busy;
        _queued.Add((id, request, caller));
        if (kvDemand is not null) _queuedDemand[id] = kvDemand;
        return Admission.Queue;
    }

    /// <summary>
    /// A request ended (done, failed, cancelled): its slot is free. Returns its caller when that has nothing else here
    /// (no longer to be watched), and the queued requests that start now, while <paramref name="state"/> is ready.
    /// </summary>
    public (TCaller? IdleCaller, IReadOnlyList<(string Id, TRequest Request, TCaller Caller)> Next) Finish(string id, ClusterState state, DateTime now)
    {
        if (!_inFlight.Remove(id, out var ended)) return (default, Array.Empty<(string, TRequest, TCaller)>());
        Unreserve(id);
        return (Holds(ended.Caller) ? default : ended.Caller, Drain(state, now));
    }

    /// <summary>Queued requests that start now (counted in flight): after a request ended, or once the model is served again.</summary>
    public IReadOnlyList<(string Id, TRequest Request, TCaller Caller)> Drain(ClusterState state, DateTime now)
    {
        var start = new List<(string, TRequest, TCaller)>();
        // In order: the queue's head waits for its KV room rather than being overtaken by smaller requests forever.
        while (state == ClusterState.Ready && _inFlight.Count < _maxInFlight && _queued.Count > 0
               && Fits(_queuedDemand.GetValueOrDefault(_queued[0].Id)))
        {
            var next = _queued[0];
            _queued.RemoveAt(0);
            _inFlight[next.Id] = (now, next.Caller);
            if (_queuedDemand.Remove(next.Id, out var demand)) Reserve(next.Id, demand);
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
        foreach (var id in withdrawn) _queuedDemand.Remove(id);
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
        _demand.Clear();
        _reserved.Clear();
        return running;
    }

    /// <summary>The model is gone: everything is dropped; returns the queued requests (they never started; in-flight ones fail by themselves).</summary>
    public IReadOnlyList<(string Id, TCaller Caller)> Clear()
    {
        var queued = _queued.Select(q => (q.Id, q.Caller)).ToList();
        _queued.Clear();
        _queuedDemand.Clear();
        _inFlight.Clear();
        _demand.Clear();
        _reserved.Clear();
        return queued;
    }

    private bool Holds(TCaller caller) => _inFlight.Values.Any(v => v.Caller.Equals(caller)) || _queued.Any(q => q.Caller.Equals(caller));
}
