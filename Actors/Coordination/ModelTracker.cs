using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>A load in progress: the slices still out (worker path → planned bytes) and those acknowledged.</summary>
public sealed record PendingLoad(string Model, int Epoch, Dictionary<string, long> Waiting, Dictionary<string, SliceLoaded> Done, ModelRecord Result)
{
    public bool Involves(string path) => Waiting.ContainsKey(path) || Done.ContainsKey(path);
}

/// <summary>What a new coordinator takes over from the workers' reports (<see cref="ModelTracker.Adopt"/>).</summary>
/// <param name="Model">The newest model they hold, served again under its epoch; null: none.</param>
/// <param name="Missing">Its stages whose workers did not report holding it: to recover.</param>
/// <param name="Release">Slices of a model no longer served (a load the old coordinator never finished): worker path → epoch.</param>
public sealed record Adoption(ModelRecord? Model, IReadOnlyList<string> Missing, IReadOnlyList<(string Path, int Epoch)> Release);

/// <summary>What losing workers means for the model.</summary>
public enum Loss
{
    /// <summary>Nothing served or loading needed them (or a new coordinator is still hearing reports).</summary>
    Nothing,
    /// <summary>The load in progress needed them: it fails (a recovery load is planned again).</summary>
    FailsLoad,
    /// <summary>The served model lost stages: recover it.</summary>
    Recover,
}

/// <summary>What a failed load comes to.</summary>
public enum LoadFailure
{
    /// <summary>Not the load in progress (superseded, or already failed): nothing to do.</summary>
    Stale,
    /// <summary>A recovery load failed (a survivor lost too, a slice refused): plan the recovery again from what is left.</summary>
    Recover,
    /// <summary>A recovery could not be planned (the survivors lack the memory): degraded until capacity joins.</summary>
    Degraded,
    /// <summary>A load failed: the model is not served (never half-loaded).</summary>
    Failed,
}

/// <summary>
/// The model side of the coordinator, without the actor: the <see cref="ClusterState"/>, plan epochs, the load in
/// progress (which slices are still out), the served model and which workers hold it, what a new coordinator hears
/// while starting and what it adopts, and every decision about a loss — fail the load, recover, degrade. Pure: each
/// method is one transition, tested with plain xunit.
/// </summary>
public sealed class ModelTracker
{
    private readonly HashSet<string> _holders = new(StringComparer.Ordinal); // workers known to hold the served epoch's slice
    private readonly Dictionary<string, HeldSlice> _held = new(StringComparer.Ordinal); // reports heard while starting
    private readonly HashSet<string> _reported = new(StringComparer.Ordinal); // worker nodes heard from while starting
    private readonly Dictionary<string, ModelRecord> _served = new(StringComparer.Ordinal); // each worker's last committed record, heard while starting
    private int _seenEpoch; // the highest plan epoch a worker reported while starting

    public ClusterState State { get; private set; } = ClusterState.Starting;
    public int Epoch { get; private set; }
    /// <summary>The model served — or, while recovering or degraded, the one being recovered (its route is broken).</summary>
    public ModelRecord? Loaded { get; private set; }
    public PendingLoad? Pending { get; private set; }
    /// <summary>Why the last load failed, or why the survivors cannot hold the model; null while neither.</summary>
    public string? Failure { get; private set; }
    /// <summary>When the current recovery began (for the log line when it ends).</summary>
    public DateTime RecoveryStarted { get; private set; }
    /// <summary>Registered workers that hold their slice of the served epoch (a recovery keeps what they hold in place).</summary>
    public IReadOnlySet<string> Holders => _holders;

    /// <summary>Stages of the served model are being re-planned and loaded, or wait for capacity.</summary>
    public bool Recovering => State is ClusterState.Recovering or ClusterState.Degraded;

    /// <summary>A fact of <paramref name="epoch"/> is one this tracker waits for: the plan or load of the newest epoch, in progress.</summary>
    public bool IsCurrent(int epoch) => epoch == Epoch && State is ClusterState.Loading or ClusterState.Recovering or ClusterState.Moving;

    // ---- a new coordinator ----

    /// <summary>
    /// While starting: a worker node registered; <paramref name="path"/>, a registered worker of it, holds
    /// <paramref name="held"/> and keeps <paramref name="served"/>, the last model record committed to it (also while it
    /// loads, or holds, a newer epoch of that model that no coordinator committed); <paramref name="seenEpoch"/> is the
    /// highest plan epoch it was sent (epochs after adoption continue above it).
    /// </summary>
    public void Report(string node, string? path = null, HeldSlice? held = null, ModelRecord? served = null, int seenEpoch = 0)
    {
        _reported.Add(node);
        if (path is null) return;
        _seenEpoch = Math.Max(_seenEpoch, seenEpoch);
        // Its latest report counts: it may hold nothing now (a load began). Its record travels once: in the held slice
        // when that is the committed epoch, else as served.
        if (held is not null) _held[path] = held;
        else _held.Remove(path);
        if ((served ?? held?.Record) is { } record) _served[path] = record;
        else _served.Remove(path);
    }

    /// <summary>Every worker node that is up and reachable has reported (none known yet: the start window decides).</summary>
    public bool AllReported(IReadOnlyCollection<string> workerNodes) => workerNodes.Count > 0 && workerNodes.All(_reported.Contains);

    /// <summary>
    /// Ends the start: the newest committed model the workers report is served again under its epoch (its stages whose
    /// workers do not hold that epoch are missing: recovering). Slices of other epochs are released — except, when stages
    /// are missing, later slices of that model (a recovery or move the last coordinator did not commit), which the
    /// recovery takes over. Later epochs continue from the newest seen. <paramref name="registered"/> says whether a
    /// reporting path is still a registered worker.
    /// </summary>
    public Adoption Adopt(Func<string, bool> registered)
    {
        var records = _served.Values.ToList();
        var newest = records.OrderByDescending(r => r.PlanEpoch).FirstOrDefault();
        Epoch = Math.Max(Math.Max(Epoch, _seenEpoch), _held.Values.Select(h => h.PlanEpoch).Concat(records.Select(r => r.PlanEpoch)).DefaultIfEmpty(0).Max());
        var held = _held.Where(kv => registered(kv.Key)).ToList();
        _held.Clear();
        _served.Clear();
        _seenEpoch = 0;
        _reported.Clear();
        if (newest is null)
        {
            State = ClusterState.Empty;
            return new Adoption(null, Array.Empty<string>(), held.Select(kv => (kv.Key, kv.Value.PlanEpoch)).ToList());
        }
        Loaded = newest;
        Failure = null;
        _holders.Clear();
        foreach (var (path, _) in held.Where(kv => kv.Value.PlanEpoch == newest.PlanEpoch)) _holders.Add(path);
        var missing = newest.Stages.Select(s => s.WorkerPath).Distinct().Where(p => !_holders.Contains(p)).ToList();
        var release = held.Where(kv => kv.Value.PlanEpoch != newest.PlanEpoch && !(missing.Count > 0 && LaterSliceOf(kv.Value, newest)))
            .Select(kv => (kv.Key, kv.Value.PlanEpoch)).ToList();
        State = ClusterState.Ready; // with stages missing, the caller begins a recovery at once
        return new Adoption(newest, missing, release);
    }

    /// <summary>
    /// Once started: whether a registered worker's report of <paramref name="held"/> names a slice of an epoch no
    /// longer in use (neither served nor loading, and older than the newest): the worker should release it.
    /// </summary>
    public bool Unused(HeldSlice held) =>
        State != ClusterState.Starting && held.PlanEpoch != Loaded?.PlanEpoch && held.PlanEpoch != Pending?.Epoch && held.PlanEpoch < Epoch
        && !(State == ClusterState.Recovering && Loaded is { } served && LaterSliceOf(held, served)); // kept at adoption for the recovery

    /// <summary>A slice of a later epoch of <paramref name="model"/> than its record's: an uncommitted recovery or move of
    /// it, which a recovery of that model takes over.</summary>
    private static bool LaterSliceOf(HeldSlice held, ModelRecord model) => held.PlanEpoch > model.PlanEpoch && held.Model == model.Folder;

    /// <summary>
    /// Once started: whether a worker keeps <paramref name="record"/> as its last committed model although that is not
    /// the model served (it missed a release, or an unload): it must let it go, or a later coordinator would adopt it.
    /// </summary>
    public bool StaleRecord(ModelRecord record) =>
        State is not (ClusterState.Starting or ClusterState.Stopping) && record.PlanEpoch != Loaded?.PlanEpoch && record.PlanEpoch < Epoch;

    // ---- loading ----

    /// <summary>A new load replaces whatever was served: returns its epoch.</summary>
    public int BeginPlan()
    {
        Forget(null);
        State = ClusterState.Loading;
        return ++Epoch;
    }

    /// <summary>A plan went out: wait for every slice of <paramref name="result"/>'s epoch.</summary>
    public void BeginLoad(IReadOnlyDictionary<string, long> slices, ModelRecord result)
    {
        Pending = new PendingLoad(result.Folder, result.PlanEpoch, new Dictionary<string, long>(slices), new Dictionary<string, SliceLoaded>(), result);
        if (State != ClusterState.Recovering) Failure = null;
    }

    /// <summary>A slice from <paramref name="path"/> arrived; returns the model once the last one has (usage filled in), else null.</summary>
    public ModelRecord? SliceLoaded(string path, SliceLoaded s, Func<string, string?> deviceOf)
    {
        if (Pending is not { } p || s.PlanEpoch != p.Epoch || !p.Waiting.Remove(path)) return null;
        p.Done[path] = s;
        if (p.Waiting.Count > 0) return null;
        var usage = p.Result.Devices.Select(u =>
        {
            var slices = p.Done.Where(d => deviceOf(d.Key) == u.Device).Select(d => d.Value).ToList();
            return u with { LoadedBytes = slices.Sum(x => x.Bytes), Streamed = slices.Any(x => x.Streamed) };
        }).ToArray();
        Pending = null;
        Loaded = p.Result with { Devices = usage };
        _holders.Clear();
        foreach (var done in p.Done.Keys) _holders.Add(done);
        State = ClusterState.Ready;
        Failure = null;
        return Loaded;
    }

    /// <summary>
    /// The plan or load of <paramref name="epoch"/> failed. In a recovery, a load that failed is planned again; a plan
    /// that could not be made (the survivors lack the memory) leaves the model degraded — with the reason, and with
    /// requests refused retryably — until capacity joins.
    /// </summary>
    public LoadFailure FailLoad(int epoch, string reason)
    {
        if (!IsCurrent(epoch)) return LoadFailure.Stale;
        if (State is ClusterState.Recovering or ClusterState.Moving) // a move that failed half-way is recovered: its old stages stopped
        {
            bool loading = Pending is not null;
            Pending = null;
            if (loading) return LoadFailure.Recover;
            State = ClusterState.Degraded;
            Failure = $"degraded: {reason} (plan epoch {epoch}); the model recovers by itself when a node with enough memory joins";
            return LoadFailure.Degraded;
        }
        Forget(reason);
        return LoadFailure.Failed;
    }

    // ---- losses and recovery ----

    /// <summary>
    /// Workers are gone (already out of the registry): what that means — the load in progress fails if it needed
    /// them, else the served model is recovered if it lost a stage. A new coordinator still starting (or a stopping one) decides nothing
    /// (adoption counts the stages that reported).
    /// </summary>
    public Loss Lose(IReadOnlyCollection<string> paths)
    {
        foreach (var p in paths) _holders.Remove(p);
        if (State is ClusterState.Starting or ClusterState.Stopping) return Loss.Nothing;
        if (Pending is { } pending && paths.Any(pending.Involves)) return Loss.FailsLoad;
        if (Pending is null && Loaded is { } model && State != ClusterState.Loading && paths.Any(p => model.Stages.Any(s => s.WorkerPath == p)))
            return Loss.Recover;
        return Loss.Nothing;
    }

    /// <summary>Capacity joined while degraded (and nothing is loading): the recovery is tried again.</summary>
    public bool RetryOnCapacity => State == ClusterState.Degraded && Pending is null;

    /// <summary>Stages of the served model were lost: re-plan under a new epoch (returned).</summary>
    public int BeginRecovery(DateTime now)
    {
        if (!Recovering) RecoveryStarted = now;
        State = ClusterState.Recovering;
        return ++Epoch;
    }

    /// <summary>
    /// Stages were lost, but the coordinator's side lacks keep-majority's quorum: nothing is planned (the other side may
    /// have a coordinator of its own); degraded, so that a worker registering again retries the recovery.
    /// </summary>
    public void AwaitQuorum(string reason, DateTime now)
    {
        if (!Recovering) RecoveryStarted = now;
        Pending = null;
        State = ClusterState.Degraded;
        Failure = $"degraded: {reason}, and this side of the cluster lacks a majority of its members: waiting for them (or to be downed)";
    }

    // ---- unloading, stopping ----

    /// <summary>Forgets the model (an unload): the cluster is empty.</summary>
    public void Unload() => Forget(null);

    /// <summary>The whole cluster is shutting down: no decision is taken any more.</summary>
    public void Stop() => State = ClusterState.Stopping;

    private void Forget(string? failure)
    {
        Loaded = null;
        Pending = null;
        _holders.Clear();
        Failure = failure;
        State = failure is null ? ClusterState.Empty : ClusterState.Failed;
    }

    // ---- drains and rebalances ----

    /// <summary>Layers move (a drain or rebalance, planned from the served model): its plan goes out under a new epoch (returned).</summary>
    public int BeginMove()
    {
        State = ClusterState.Moving;
        return ++Epoch;
    }

    /// <summary>Layers are moving for a drain or rebalance.</summary>
    public bool Moving => State == ClusterState.Moving;

    /// <summary>The epoch a move planned now will be loaded under.</summary>
    public int NextEpoch => Epoch + 1;
}
