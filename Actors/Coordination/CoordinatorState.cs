using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// The coordinator's decisions, without the actor, in three parts by concern: the <see cref="Registry"/> of workers
/// and nodes (<see cref="WorkerRegistry"/>), the <see cref="Model"/>'s load and recovery (<see cref="ModelTracker"/>:
/// adoption, losses, re-planning), and <see cref="Admission"/> of requests (<see cref="AdmissionQueue{TRequest,TCaller}"/>).
/// This class joins them where a decision needs two, and answers status. Each part is tested with plain xunit; the
/// actor only moves messages and keeps timers.
/// </summary>
public sealed partial class CoordinatorState<TCaller> where TCaller : notnull
{
    public WorkerRegistry Registry { get; }
    public ModelTracker Model { get; } = new();
    public AdmissionQueue<IClientRequest, TCaller> Admission { get; }

    private readonly long _kvCap;
    private readonly bool _bySpeed;

    /// <param name="kvCap">The most KV-cache bytes a device may hold (<c>shardpipe.kv-cache-budget</c>; 0 = what its budget leaves after the weights).</param>
    /// <param name="balance"><c>shardpipe.placement.balance</c>: <c>speed</c> weighs devices by their measured speeds too, <c>bytes</c> by budgets alone.</param>
    public CoordinatorState(int protocolVersion, long maxFrameSize, int maxInFlight, int maxQueued, long kvCap = 0, string balance = "bytes")
    {
        _kvCap = kvCap;
        _bySpeed = balance == "speed";
        Registry = new WorkerRegistry(protocolVersion, maxFrameSize);
        Admission = new AdmissionQueue<IClientRequest, TCaller>(maxInFlight, maxQueued);
    }

    public ClusterState State => Model.State;

    /// <summary>
    /// A registration from <paramref name="node"/> (that passed the intake rules): the registry's answer, what a new
    /// coordinator hears from it (and whether it has now heard every node in <paramref name="workerNodes"/>: adopt), a
    /// slice it holds of an epoch no longer used (to release), and whether the capacity it brings retries a recovery.
    /// </summary>
    public Registered Register(RegisterWorker r, string node, Func<IReadOnlyCollection<string>> workerNodes)
    {
        bool starting = State == ClusterState.Starting;
        if (starting) Model.Report(node);
        var outcome = Registry.Register(r, node);
        if (outcome is Registration.Refused refused)
            return new Registered(new WorkerRefused(r.NodeName, refused.Reason), refused.Reason, Array.Empty<WorkerInfo>(), Array.Empty<RefusedDevice>(), null, false, false);
        var accepted = (Registration.Accepted)outcome;
        IShardPipeMessage reply = accepted.RefusedDevices.Count > 0 && accepted.Joined.Count == 0 && r.Devices.All(d => Registry.Worker(d.ActorPath) is null)
            ? new WorkerRefused(r.NodeName, string.Join("; ", accepted.RefusedDevices.Select(d => $"{d.Device}: {d.Reason}")))
            : new WorkerRegistered(r.NodeName);
        (string, int)? release = null;
        if (r.Devices.Length == 1 && Registry.Worker(r.Devices[0].ActorPath) is not null)
        {
            if (starting)
            {
                Model.Report(node, r.Devices[0].ActorPath, r.Holding, r.Served, r.SeenEpoch);
                if (r.Drained) DrainReported(r.NodeName);
            }
            else if (r.Holding is { } held && Model.Unused(held)) release = (r.Devices[0].ActorPath, held.PlanEpoch);
            else if ((r.Served ?? r.Holding?.Record) is { } kept && Model.StaleRecord(kept)) release = (r.Devices[0].ActorPath, kept.PlanEpoch);
        }
        // A drain this coordinator did not know of (its node registered after the start window): drained from now on.
        bool lateDrain = !starting && r.Drained && !NodeMoves.IsDrained(r.NodeName) && RestoreDrain(r.NodeName);
        bool adopt = starting && Model.AllReported(workerNodes());
        return new Registered(reply, null, accepted.Joined, accepted.RefusedDevices, release, adopt,
            !adopt && accepted.Joined.Count > 0 && Model.RetryOnCapacity, lateDrain);
    }

    /// <summary>Admission of a request from <paramref name="caller"/>: how it goes, and the refusal to answer with when it does not start or queue.</summary>
    public (Admission Admission, RequestFailed? Refusal) Admit(IClientRequest request, TCaller caller, DateTime now)
    {
        string id = request.RequestId, state = State.ToString().ToLowerInvariant();
        var devices = Model.Loaded?.Devices ?? Array.Empty<DeviceUsage>();
        Admission.SetKvBudgets(KvDemand.Budgets(devices));
        long tokens = KvDemand.Tokens(request);
        var admission = Admission.Admit(id, request, caller, State, now, KvDemand.Of(devices, request.InputIds.Length, tokens));
        return (admission, admission switch
        {
            Coordination.Admission.Start or Coordination.Admission.Queue => null,
            Coordination.Admission.NeverFits => new RequestFailed(id, "coordinator", $"this request can never run here: {KvDemand.NeverFits(devices, request.InputIds.Length, tokens)}", Invalid: true),
            Coordination.Admission.Duplicate => new RequestFailed(id, "coordinator", $"request id '{id}' is already running or queued; every request needs its own id", Invalid: true),
            Coordination.Admission.Busy => new RequestFailed(id, "coordinator", $"busy: {Admission.InFlight} requests in flight and {Admission.Queued} queued; retry later"),
            Coordination.Admission.Starting => new RequestFailed(id, "coordinator", "the coordinator is starting; retry shortly", Retryable: true),
            Coordination.Admission.Recovering => new RequestFailed(id, "coordinator", $"the model is {state}: {Model.Failure ?? (NodeMoves.Asked is { } m ? $"its layers move ({m.Describe()})" : "lost stages are being re-planned")}", Retryable: true),
            _ => new RequestFailed(id, "coordinator", $"no model is loaded (state: {state}{(Model.Failure is { } f ? $": {f}" : "")})"),
        });
    }

    /// <summary>Workers are gone (their node crashed, was cut off, or left): out of the registry, and what it means for the model.</summary>
    public Loss Lose(IReadOnlyCollection<string> paths)
    {
        var known = paths.Where(Registry.Remove).ToList();
        return known.Count == 0 ? Loss.Nothing : Model.Lose(known);
    }

    /// <summary>
    /// The plan for a described model under <paramref name="epoch"/>: over every worker, or — recovering — the served
    /// model's lost modules re-planned onto the survivors (what the holders keep stays in place). Null with the reason
    /// when it cannot be made (a bad request, too little memory).
    /// </summary>
    public (LoadPlan? Plan, int Epoch, string? Error) Plan(LoadModel request, ModelDescription model, int epoch)
    {
        try
        {
            var workers = NodeMoves.Plannable(Registry.Workers); // never onto a drained node
            return (Model.Recovering ? SlicePlanner.Replan(model, Model.Loaded!, workers, Model.Holders, epoch, _kvCap).Plan
                : SlicePlanner.Plan(model, request, workers, epoch, _kvCap, PlanningSpeeds), epoch, null);
        }
        catch (Exception ex) // a bad request must never restart the coordinator (it would forget every worker)
        {
            return (null, epoch, ex.Message);
        }
    }

    /// <summary>The speeds a fresh plan weighs devices by: the registered workers' reports under <c>balance = speed</c>, else none.</summary>
    public IReadOnlyDictionary<Placement.DeviceId, double>? PlanningSpeeds => _bySpeed ? Registry.Speeds() : null;

    /// <summary>Why a load timed out: the stages still out.</summary>
    public string LoadTimeoutReason(TimeSpan timeout) => $"load did not finish within {timeout.TotalSeconds:0} s " +
        $"(waiting for {string.Join(", ", Model.Pending?.Waiting.Keys.Select(Describe) ?? Array.Empty<string>())})";

    /// <summary>Why another load is refused while one (of <paramref name="loading"/>) or a recovery is under way.</summary>
    public string LoadRefusal(string? loading) => Model.Recovering
        ? $"the cluster is recovering {Model.Loaded?.Folder}; unload it first or retry when it is ready"
        : Model.Moving ? $"layers of {Model.Loaded?.Folder} are moving ({NodeMoves.Asked?.Describe() ?? "a move"}); retry when it is ready"
        : $"a load of {loading} is in progress";

    /// <summary>How a loss of <paramref name="paths"/> reads: "node node-2 (node-2/cpu) was lost".</summary>
    public string LossSummary(IReadOnlyList<string> paths)
    {
        var names = paths.Select(Describe).ToList();
        return $"node {names[0].Split('/')[0]} ({string.Join(", ", names)}) was lost";
    }

    /// <summary>A slice arrived from the worker at <paramref name="path"/>: the served model once it was the last.</summary>
    public ModelRecord? SliceLoaded(string path, SliceLoaded s) => Model.SliceLoaded(path, s, p => Registry.Worker(p)?.ToString());

    /// <summary>How a worker is named in logs and errors: node/device, else the stage's device, else its path.</summary>
    public string Describe(string workerPath) => Registry.Worker(workerPath)?.ToString()
        ?? Model.Loaded?.Stages.FirstOrDefault(s => s.WorkerPath == workerPath)?.Device ?? workerPath;

    /// <summary>What moved in a recovery, as log lines write it.</summary>
    public static string Moves(ModelRecord model, string none) =>
        model.Moved is { Length: > 0 } m ? string.Join(", ", m.Select(e => $"{e.Module} → {e.Device}")) : none;

    public ClusterStatus Status(string requestId)
    {
        var loaded = Model.Loaded;
        var workers = Registry.Workers;
        return new(requestId, State, loaded?.Folder ?? Model.Pending?.Model,
            workers.Select(w => w.Node).Distinct().ToArray(),
            loaded?.Devices.Select(d => d with { KvReservedBytes = Admission.Reserved(d.Device) }).ToArray() ?? workers.Select(w => new DeviceUsage(w.ToString(), 0, 0, w.Budget)).ToArray(),
            loaded?.Stages ?? Array.Empty<StageInfo>(),
            loaded?.DeviceMap ?? Array.Empty<DeviceMapEntry>(),
            Model.Failure,
            Registry.Refused.ToArray(),
            loaded?.PlanEpoch ?? Model.Pending?.Epoch ?? 0,
            Admission.InFlight,
            Admission.Queued,
            loaded?.Recoveries > 0 ? loaded.Moved : null,
            loaded?.Recoveries ?? 0,
            Registry.Timings(),
            NodeMoves.Status() is { Length: > 0 } drains ? drains : null);
    }
}

/// <summary>What a registration comes to for the actor (<see cref="CoordinatorState{TCaller}.Register"/>).</summary>
/// <param name="Reply">To the registering node: registered, or refused (with why).</param>
/// <param name="RefusedNode">Why the whole node was refused (its wire settings differ), else null.</param>
/// <param name="Release">A slice it holds of an epoch no longer used: worker path and epoch.</param>
/// <param name="Adopt">A new coordinator has now heard every worker node: adopt what they hold.</param>
/// <param name="RetryRecovery">Capacity joined a degraded model: try the recovery again.</param>
/// <param name="DrainLearned">Its workers say their node is being drained, which this coordinator did not know (it
/// registered after the start window): it is drained now; finish the drain (<see cref="CoordinatorState{TCaller}.ContinueDrains"/>).</param>
public sealed record Registered(IShardPipeMessage Reply, string? RefusedNode, IReadOnlyList<WorkerInfo> Joined, IReadOnlyList<RefusedDevice> RefusedDevices,
    (string Path, int Epoch)? Release, bool Adopt, bool RetryRecovery, bool DrainLearned = false);
