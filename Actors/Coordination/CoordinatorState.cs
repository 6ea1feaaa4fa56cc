using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Coordination;

/// <summary>A registered device worker, known by its actor path.</summary>
public sealed record WorkerInfo(string Path, string Node, string Device, long Budget, bool HasLocalCheckpoints)
{
    public DeviceId Id => DeviceId.Parse($"{Node}/{Device}");
    public override string ToString() => $"{Node}/{Device}";
}

/// <summary>
/// A model the cluster serves: where every module went and what every stage holds; the load request it came from
/// (a recovery re-plans from it), how many recoveries it went through and what moved in the last one.
/// </summary>
public sealed record LoadedModel(string Model, int Epoch, PipelineHop[] Route, DeviceMapEntry[] DeviceMap, DeviceUsage[] Usage,
    StageInfo[] Stages, StopTokens Stop, long Vocab, long MaxPositions = 2048, LoadModel? Request = null, int Recoveries = 0,
    DeviceMapEntry[]? Moved = null)
{
    /// <summary>What the workers keep and report back, so that a coordinator on another node can serve it again.</summary>
    public ModelRecord ToRecord() => new(Request ?? new LoadModel("", Model, null, null, "auto", null, null), Model, Epoch, Route, DeviceMap, Usage,
        Stages, Stop.Eos, Stop.Pad, Vocab, MaxPositions, Recoveries, Moved ?? Array.Empty<DeviceMapEntry>());

    public static LoadedModel FromRecord(ModelRecord r) => new(r.Folder, r.PlanEpoch, r.Route, r.DeviceMap, r.Devices, r.Stages,
        new StopTokens(r.EosTokenIds, r.PadTokenId), r.Vocab, r.MaxPositions, r.Request, r.Recoveries, r.Moved);
}

/// <summary>What a registration comes to.</summary>
public abstract record Registration
{
    /// <summary>New devices joined (possibly none, for a repeated registration).</summary>
    public sealed record Accepted(IReadOnlyList<WorkerInfo> Joined, IReadOnlyList<RefusedDevice> RefusedDevices) : Registration;
    /// <summary>The whole node is refused (its wire settings differ from the cluster's).</summary>
    public sealed record Refused(string Reason) : Registration;
}

/// <summary>What admission decides for a request.</summary>
public enum Admission { Start, Queue, Busy, NoModel, Recovering }

/// <summary>
/// The coordinator's bookkeeping, without the actor: the worker registry, plan epochs, the load in progress
/// (which slices are still out), the loaded model, and admission (requests in flight, a bounded queue). Pure:
/// every method is a decision over this state, tested with plain xunit; the actor only moves messages.
/// </summary>
public sealed class CoordinatorState
{
    private readonly int _protocolVersion;
    private readonly long _maxFrameSize;
    private readonly int _maxInFlight, _maxQueued;
    private readonly List<WorkerInfo> _workers = new();
    private readonly Dictionary<string, RefusedDevice> _refused = new(StringComparer.Ordinal);
    private readonly Dictionary<string, DateTime> _inFlight = new(StringComparer.Ordinal);
    private readonly Queue<string> _queued = new();
    private readonly HashSet<string> _holders = new(StringComparer.Ordinal); // workers known to hold the served epoch's slice

    public CoordinatorState(int protocolVersion, long maxFrameSize, int maxInFlight, int maxQueued)
    {
        _protocolVersion = protocolVersion;
        _maxFrameSize = maxFrameSize;
        _maxInFlight = maxInFlight;
        _maxQueued = maxQueued;
    }

    public IReadOnlyList<WorkerInfo> Workers => _workers;
    public int Epoch { get; private set; }
    /// <summary>The model served — or, while <see cref="Recovering"/>, the one being recovered (its route is broken).</summary>
    public LoadedModel? Loaded { get; private set; }
    public PendingLoad? Pending { get; private set; }
    /// <summary>Stages of <see cref="Loaded"/> were lost: requests wait while the lost modules are re-planned and loaded.</summary>
    public bool Recovering { get; private set; }
    /// <summary>Why the survivors cannot hold the model (bytes missing on which plan); it recovers when capacity joins.</summary>
    public string? Degraded { get; private set; }
    /// <summary>A new coordinator's first moments: workers report what they hold before it decides what the cluster serves.</summary>
    public bool Starting { get; private set; }
    /// <summary>Why the last load failed or the model was lost; null while none did.</summary>
    public string? Failure { get; private set; }
    public int InFlight => _inFlight.Count;
    public int Queued => _queued.Count;

    public string StateName => Starting ? "starting" : Recovering ? (Degraded is not null ? "degraded" : "recovering")
        : Pending is not null ? "loading" : Loaded is not null ? "ready" : Failure is not null ? "failed" : "empty";

    /// <summary>Serving requests: a model is loaded and its route whole.</summary>
    public bool Serving => Loaded is not null && !Recovering && !Starting;

    public WorkerInfo? Worker(string path) => _workers.FirstOrDefault(w => w.Path == path);

    /// <summary>Registered workers that hold their slice of the served epoch (a recovery keeps what they hold in place).</summary>
    public IReadOnlySet<string> Holders => _holders;

    // ---- registry ----

    /// <summary>
    /// A node's registration: refused as a whole when its protocol version or frame size differ; otherwise each of
    /// its devices joins unless the node says it cannot compute on it (kept as refused, for status) or it is known.
    /// </summary>
    public Registration Register(RegisterWorker r)
    {
        if (r.Devices.All(d => _workers.Any(w => w.Path == d.ActorPath)))
        {
            NoteTiming(r); // a repeat: only the node's timing changes
            return new Registration.Accepted(Array.Empty<WorkerInfo>(), Array.Empty<RefusedDevice>());
        }
        if (r.ProtocolVersion != _protocolVersion)
            return new Registration.Refused($"protocol version {r.ProtocolVersion}, the cluster speaks {_protocolVersion}");
        if (r.MaxFrameSize != _maxFrameSize)
            return new Registration.Refused($"maximum-frame-size {r.MaxFrameSize} bytes, the cluster uses {_maxFrameSize}");
        var joined = new List<WorkerInfo>();
        var refused = new List<RefusedDevice>();
        foreach (var d in r.Devices)
        {
            string name = $"{r.NodeName}/{d.Device}";
            string? problem = d.Unusable ?? DeviceProblem(r.NodeName, d);
            if (problem is not null)
            {
                var entry = new RefusedDevice(name, problem);
                _refused[name] = entry;
                refused.Add(entry);
                continue;
            }
            if (_workers.Any(w => w.Path == d.ActorPath)) continue;
            var worker = new WorkerInfo(d.ActorPath, r.NodeName, d.Device, d.BudgetBytes, r.LocalModelRoots.Length > 0);
            _workers.Add(worker);
            _refused.Remove(name);
            joined.Add(worker);
        }
        NoteTiming(r);
        return new Registration.Accepted(joined, refused);
    }

    /// <summary>Keeps the node timing a registration reports, for the devices that are workers.</summary>
    private void NoteTiming(RegisterWorker r)
    {
        if (r.Timing is not { } timing) return;
        foreach (var d in r.Devices)
            if (_workers.Any(w => w.Path == d.ActorPath)) _timings[d.ActorPath] = timing;
    }

    private static string? DeviceProblem(string node, WorkerDevice d)
    {
        if (string.IsNullOrEmpty(node) || node.Contains('/')) return $"node name '{node}' is empty or contains '/'";
        if (d.BudgetBytes < 0) return $"negative budget {d.BudgetBytes}";
        try
        {
            var id = DeviceId.Parse(d.Device);
            return id.Node is not null ? $"'{d.Device}' is not a device of one node (cpu, disk, cuda:N)" : null;
        }
        catch (InvalidInputException ex) { return ex.Message; }
    }

    /// <summary>Begins a new coordinator's start: until <see cref="Adopt"/>, workers' reports are collected.</summary>
    public void BeginStart() => Starting = true;

    /// <summary>
    /// A new coordinator adopts the newest model the workers report (null: none): it is served again under its epoch.
    /// Returns the stages of that model whose workers did not report holding it (lost with the old coordinator's node,
    /// or gone since): the actor recovers them. Later epochs continue from the newest one seen.
    /// </summary>
    public IReadOnlyList<string> Adopt(ModelRecord? newest, IReadOnlyCollection<string> holders, int highestEpochSeen)
    {
        Starting = false;
        Epoch = Math.Max(Epoch, highestEpochSeen);
        if (newest is null) return Array.Empty<string>();
        Loaded = LoadedModel.FromRecord(newest);
        Failure = null;
        _holders.Clear();
        foreach (var p in holders.Where(p => Worker(p) is not null)) _holders.Add(p);
        var missing = Loaded.Stages.Select(s => s.WorkerPath).Distinct().Where(p => !_holders.Contains(p)).ToList();
        if (missing.Count > 0) Recovering = true;
        return missing;
    }

    /// <summary>
    /// Stages of the served model were lost: requests in flight are dropped from admission (their callers resume them
    /// once the model is back); queued ones wait. The next plan goes out under a new epoch.
    /// </summary>
    public void BeginRecovery()
    {
        Recovering = true;
        _inFlight.Clear();
    }

    /// <summary>The survivors cannot hold the model: it stays degraded (with the reason) until capacity joins.</summary>
    public void MarkDegraded(string reason)
    {
        Recovering = true;
        Degraded = reason;
    }

    /// <summary>A worker is gone: what that means for the load in progress and for the loaded model.</summary>
    public (bool FailsLoad, bool LosesModel) Remove(string path)
    {
        var worker = Worker(path);
        if (worker is null) return (false, false);
        _workers.Remove(worker);
        _holders.Remove(path);
        _timings.Remove(path);
        bool failsLoad = Pending?.Involves(path) == true;
        bool losesModel = Loaded?.Stages.Any(s => s.WorkerPath == path) == true;
        return (failsLoad, losesModel);
    }

    // ---- loading ----

    public int NextEpoch() => ++Epoch;

    /// <summary>A plan went out: wait for every slice of <paramref name="epoch"/>.</summary>
    public void BeginLoad(string model, int epoch, IReadOnlyDictionary<string, long> slices, LoadedModel result)
    {
        Pending = new PendingLoad(model, epoch, new Dictionary<string, long>(slices), new Dictionary<string, SliceLoaded>(), result);
        if (!Recovering) Failure = null;
    }

    /// <summary>A slice arrived; returns the loaded model once the last one has (usage filled in), else null.</summary>
    public LoadedModel? SliceLoaded(string path, SliceLoaded s)
    {
        if (Pending is not { } p || s.PlanEpoch != p.Epoch || !p.Waiting.Remove(path)) return null;
        p.Done[path] = s;
        if (p.Waiting.Count > 0) return null;
        var usage = p.Result.Usage.Select(u =>
        {
            var slices = p.Done.Where(d => Worker(d.Key)?.ToString() == u.Device).Select(d => d.Value).ToList();
            return u with { LoadedBytes = slices.Sum(x => x.Bytes), Streamed = slices.Any(x => x.Streamed) };
        }).ToArray();
        Pending = null;
        Loaded = p.Result with { Usage = usage };
        _holders.Clear();
        foreach (var done in p.Done.Keys) _holders.Add(done);
        Recovering = false;
        Degraded = null;
        return Loaded;
    }

    /// <summary>The load of <paramref name="epoch"/> failed; false when that load is no longer the one in progress.</summary>
    public bool FailLoad(int epoch, string reason)
    {
        if (Pending is null || Pending.Epoch != epoch) return false;
        Pending = null;
        Failure = reason;
        return true;
    }

    /// <summary>
    /// Forgets the loaded model (its requests fail by themselves: callers watch their stages) and returns the ids
    /// of queued requests, which never started.
    /// </summary>
    public IReadOnlyList<string> Unload(string? failure = null)
    {
        var queued = _queued.ToList();
        _queued.Clear();
        _inFlight.Clear();
        Loaded = null;
        _holders.Clear();
        Recovering = false;
        Degraded = null;
        Failure = failure;
        return queued;
    }

    // ---- admission ----

    /// <summary>Start now, queue, or refuse: at most max-in-flight requests in the pipeline and max-queued waiting.</summary>
    public Admission Admit(string requestId, DateTime now)
    {
        if (Loaded is null || Starting) return Admission.NoModel;
        if (Recovering) return Admission.Recovering;
        if (_inFlight.Count < _maxInFlight)
        {
            _inFlight[requestId] = now;
            return Admission.Start;
        }
        if (_queued.Count >= _maxQueued) return Admission.Busy;
        _queued.Enqueue(requestId);
        return Admission.Queue;
    }

    /// <summary>A request ended; returns the queued requests that may start now (already counted in flight).</summary>
    public IReadOnlyList<string> Finish(string requestId, DateTime now)
    {
        return _inFlight.Remove(requestId) ? Drain(now) : Array.Empty<string>();
    }

    /// <summary>A queued request leaves the queue without starting (its caller went away); false when it was not queued.</summary>
    public bool Withdraw(string requestId)
    {
        if (!_queued.Contains(requestId)) return false;
        var rest = _queued.Where(id => id != requestId).ToList();
        _queued.Clear();
        foreach (var id in rest) _queued.Enqueue(id);
        return true;
    }

    /// <summary>Queued requests that may start now (counted in flight): after a request ended, or once the model is served again after a recovery.</summary>
    public IReadOnlyList<string> Drain(DateTime now)
    {
        var start = new List<string>();
        while (Serving && _inFlight.Count < _maxInFlight && _queued.Count > 0)
        {
            string next = _queued.Dequeue();
            _inFlight[next] = now;
            start.Add(next);
        }
        return start;
    }

    /// <summary>Requests in flight longer than <paramref name="limit"/> (their caller has failed them by its stall timeout).</summary>
    public IReadOnlyList<string> Stale(DateTime now, TimeSpan limit) => _inFlight.Where(kv => now - kv.Value > limit).Select(kv => kv.Key).ToList();

    // ---- status ----

    private readonly Dictionary<string, StageTiming> _timings = new(StringComparer.Ordinal);

    public ClusterStatus Status(string requestId) => new(requestId, StateName, Loaded?.Model ?? Pending?.Model,
        _workers.Select(w => w.Node).Distinct().ToArray(),
        Loaded?.Usage ?? _workers.Select(w => new DeviceUsage(w.ToString(), 0, 0, w.Budget)).ToArray(),
        Loaded?.Stages ?? Array.Empty<StageInfo>(),
        Loaded?.DeviceMap ?? Array.Empty<DeviceMapEntry>(),
        Degraded ?? Failure,
        _refused.Values.ToArray(),
        Loaded?.Epoch ?? Pending?.Epoch ?? 0,
        _inFlight.Count,
        _queued.Count,
        Loaded?.Moved,
        Loaded?.Recoveries ?? 0,
        _workers.Where(w => _timings.ContainsKey(w.Path)).Select(w => new DeviceTiming(w.ToString(), _timings[w.Path])).ToArray());
}

/// <summary>A load in progress: the slices still out (worker path → planned bytes) and those acknowledged.</summary>
public sealed record PendingLoad(string Model, int Epoch, Dictionary<string, long> Waiting, Dictionary<string, SliceLoaded> Done, LoadedModel Result)
{
    public bool Involves(string path) => Waiting.ContainsKey(path) || Done.ContainsKey(path);
}
