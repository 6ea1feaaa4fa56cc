using Akka.Actor;
using ShardPipe.Actors.Diagnostics;
using Akka.Event;
using ShardPipe.Actors.Membership;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// One per device: registers with the coordinator, materialises its planned slice (from local shards, or streamed
/// from a node that has them), refuses a slice over its budget before reading anything, and runs its hops of
/// the pipeline. Loading runs off the actor thread and comes back through PipeTo.
/// </summary>
public sealed class DeviceWorkerActor : ReceiveActor, IWithStash, IWithTimers
{
    public IStash Stash { get; set; } = null!;
    public ITimerScheduler Timers { get; set; } = null!;

    private sealed record SliceError(int Epoch, string Reason);
    private sealed record RegisterTick;
    private sealed record EvictTick;

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly NodeSettings _settings;
    private readonly string _device;
    private readonly long _budget;
    private readonly IActorRef _coordinator;
    private readonly string _stage;
    private readonly ActivationListener? _listener;
    private readonly StageExecutor _executor;
    private CausalLMModel? _model;
    private int _epoch = -1;
    private int _seenEpoch;         // the highest plan epoch a coordinator sent this worker (reported: never reused)
    private SliceLoaded? _loaded;
    private long _stepsAtLoad;      // the node's step count when the slice came in (later steps time this slice)
    private double? _stepSpeed;     // the last speed this node's real steps showed (bytes/s)
    private LoadSlice? _slice;      // the slice held (what it covers, for registrations and reuse)
    private ModelRecord? _record;   // the served model's last committed record (kept while a newer epoch of it loads)
    private bool _drained;          // this node is being drained (NodeDrained): reported, so that a new coordinator finishes the drain

    public DeviceWorkerActor(NodeSettings settings, string device, long budget, IActorRef coordinator, ActivationListener? listener)
    {
        _settings = settings;
        _device = device;
        _budget = budget;
        _coordinator = coordinator;
        _stage = $"{settings.NodeName}/{device}";
        _listener = listener;
        _executor = new StageExecutor(settings, _stage, Self, Path(), Context.System, _log);
        Unregistered();
    }

    /// <param name="listener">This node's activation-link listener; null when links are off here.</param>
    public static Props Props(NodeSettings settings, string device, long budget, IActorRef coordinator, ActivationListener? listener = null) =>
        Akka.Actor.Props.Create(() => new DeviceWorkerActor(settings, device, budget, coordinator, listener)).WithDispatcher("akka.actor.shardpipe-compute-dispatcher");

    protected override void PreStart()
    {
        // Registration repeats for as long as the worker lives: a coordinator that moved learns the cluster from it.
        Timers.StartPeriodicTimer("register", new RegisterTick(), TimeSpan.Zero, _settings.RegisterInterval);
        Timers.StartPeriodicTimer("evict", new EvictTick(), _settings.CacheSweepInterval);
    }

    private RegisterWorker Registration()
    {
        var holding = _slice is { } s && _loaded is { } l
            ? new HeldSlice(s.PlanEpoch, s.Model, s.ModulePrefixes, l.Bytes, _record is { } r && r.PlanEpoch == s.PlanEpoch ? r : null) : null;
        return new(_settings.DebugProtocolVersion ?? Protocol.Version, _settings.MaxFrameSize, _settings.NodeName,
            new[] { new WorkerDevice(_device, _budget, Akka.Serialization.Serialization.SerializedActorPath(Self), Unusable()) },
            _settings.LocalCheckpoints ? (_settings.ModelRoots.Count > 0 ? _settings.ModelRoots.ToArray() : new[] { "*" }) : Array.Empty<string>(),
            holding, Timing(), Speed(),
            holding?.Record is null ? _record : null, // the record goes once: in the held slice when it is that epoch's
            _seenEpoch, _drained);
    }

    /// <summary>This node's recent step and hop medians (diagnostics kept apart from what benchmarks drain).</summary>
    private StageTiming Timing()
    {
        var d = NodeDiagnostics.For(Context.System);
        static double Median(List<double> xs) => xs.Count == 0 ? 0 : xs.Order().ElementAt(xs.Count / 2);
        var rows = d.StepRows.Recent();
        return new StageTiming(Median(d.StepTimes.Recent()), Median(d.HopLatency.Recent()), d.StepTimes.Count, rows.Count == 0 ? 0 : rows.Average(),
            _executor.Prefix is { } p ? new PrefixCacheFigures(p.PromptTokens, p.ReusedTokens, p.Cache.Bytes, p.Cache.Blocks, p.Cache.Evictions, p.Restarts) : null);
    }

    /// <summary>
    /// This node's speed for placement: what its real steps showed once it ran enough of its slice (the last such figure
    /// is kept after an unload, for the next plan), else the calibration at start. Called from handlers only.
    /// </summary>
    private double? Speed()
    {
        var d = NodeDiagnostics.For(Context.System);
        if (_loaded is { } l && DeviceSpeed.FromSteps(l.Bytes, d.StepTimes.Recent(), d.StepRows.Recent(), d.StepTimes.Count - _stepsAtLoad) is { } measured)
            _stepSpeed = measured;
        return _stepSpeed ?? _executor.CalibratedSpeed;
    }

    /// <summary>Why this node cannot compute on its device (a CUDA device on a build without CUDA), or null.</summary>
    private string? Unusable()
    {
        try { return TorchRuntime.Unusable(DeviceId.Parse(_device)); }
        catch (InvalidInputException ex) { return ex.Message; }
    }

    private void Unregistered()
    {
        Receive<RegisterTick>(_ => _coordinator.Tell(Registration()));
        Receive<WorkerRegistered>(_ =>
        {
            _log.Info("{0} registered with the coordinator", _stage);
            Become(Idle);
        });
        Receive<WorkerRefused>(r =>
        {
            if (r.Transient)
            {
                _log.Info("{0}: not registered yet: {1}", _stage, r.Reason); // still joining: the next registration follows
                return;
            }
            Timers.Cancel("register");
            _log.Error("{0} refused by the coordinator: {1}", _stage, r.Reason);
        });
        Receive<EvictTick>(_ => DropStaleChunks());
        ReceiveAny(_ => Stash.Stash());
    }

    /// <summary>A chunked message, once whole, is handled as if it had arrived in one piece (same sender).</summary>
    private void Reassemble(MessageChunk c)
    {
        if (!FromMember("a message chunk")) return; // strangers do not get memory held for their transfers
        try
        {
            if (_chunks.Add(c) is { } whole) Self.Forward(whole);
        }
        catch (ProtocolException ex)
        {
            _log.Warning("{0}: dropped a chunked message: {1}", _stage, ex.Message);
        }
    }

    /// <summary>What every registered state answers: repeated registrations, commits, and activation links.</summary>
    private void Registered()
    {
        Receive<RegisterTick>(_ => _coordinator.Tell(Registration()));
        Receive<WorkerRegistered>(_ => { });
        Receive<WorkerRefused>(r => _log.Warning("{0}: a coordinator refused this worker: {1}", _stage, r.Reason));
        Receive<ModelCommitted>(c =>
        {
            if (FromCoordinator("a commit") && c.Record.PlanEpoch == _epoch) _record = c.Record;
        });
        Receive<NodeDrained>(OnNodeDrained);
        LinkHandling();
    }

    /// <summary>This node is being drained: reported with every registration from now on (a coordinator that takes over finishes the drain).</summary>
    private void OnNodeDrained(NodeDrained d)
    {
        if (!FromCoordinator("a drain notice") || _drained) return;
        _drained = true;
        _log.Info("{0}: this node is being drained (epoch {1}): its layers move to the others, then it leaves", _stage, d.PlanEpoch);
    }

    /// <summary>Activation links: offers to peers (any state after registration), and this worker's own links.</summary>
    private void LinkHandling()
    {
        Receive<OpenLink>(o =>
        {
            string? refusal = _listener is null ? $"activation links are off on {_settings.NodeName}"
                : !FromMember("a link request") ? "not a member of this cluster"
                : null;
            if (refusal is null && _slice is null)
            {
                Stash.Stash(); // asked before this stage's slice came: answered once it is loaded
                return;
            }
            if (refusal is null && !LinkIntake.SendsTo(_slice!.Route, Sender.Path, ActorPath.Parse(Path())))
            {
                refusal = $"{Sender.Path} does not send to {_stage} in epoch {_slice.PlanEpoch}";
                Refused("a link request", refusal);
            }
            Sender.Tell(refusal is not null
                ? new LinkOffer(o.Target, "", 0, Array.Empty<byte>(), 0, refusal)
                : new LinkOffer(o.Target, _listener!.Host, _listener.Port, _listener.Offer(Self, Sender, _executor.Deliver), _listener.MaxFrameBytes));
        });
        Receive<LinkOffer>(o =>
        {
            if (LinkIntake.IsOfferFrom(o.Target, Sender.Path)) _executor.LinkOffered(o);
            else Refused("a link offer", $"it names {o.Target}, but came from {Sender.Path}");
        });
        Receive<ActivationLinks.Connected>(_executor.LinkUp);
        Receive<ActivationLinks.ConnectFailed>(_executor.LinkDown);
    }

    /// <summary>Asks for a link to every stage on another node that this worker's hops send to.</summary>
    private void OpenLinks(PipelineHop[] route)
    {
        string self = Path();
        var provider = ((ExtendedActorSystem)Context.System).Provider;
        var here = ActorPath.Parse(self).Address;
        for (int i = 0; i < route.Length; i++)
        {
            if (route[i].WorkerPath != self) continue;
            var targets = new List<string>();
            if (i + 1 < route.Length) targets.Add(route[i + 1].WorkerPath);
            if (route[i].Head) targets.Add(route[0].WorkerPath); // the next step's token loops back to the first hop
            foreach (var t in targets)
                if (ActorPath.TryParse(t, out var path) && path.Address != here) _executor.WantLink(t, provider.ResolveActorRef(t));
        }
    }

    private void Idle()
    {
        Stash.UnstashAll();
        Registered();
        Receive<MessageChunk>(Reassemble);
        Receive<LoadSlice>(OnLoadSlice);
        Receive<ReleaseSlice>(r =>
        {
            if (!FromCoordinator("a release")) return;
            ForgetRecord(r.PlanEpoch); // a failed load kept it: the model is let go
            Sender.Tell(new ModelUnloaded(""));
        });
        Receive<StageInput>(i => { if (FromMember()) _executor.Fail(i, "no model slice is loaded on this stage", retryable: true); });
        Receive<StageBatch>(b =>
        {
            if (FromMember())
                foreach (var i in b.Steps) _executor.Fail(i, "no model slice is loaded on this stage", retryable: true);
        });
        Receive<ReleaseRequest>(_ => { });
        Receive<EvictTick>(_ => DropStaleChunks());
    }

    private void StartLoad(LoadSlice slice)
    {
        if (slice.PlanEpoch == _epoch && _loaded is not null)
        {
            if (_slice!.SamePlan(slice))
            {
                Sender.Tell(_loaded); // idempotent: this epoch's slice is already here
                return;
            }
            // two coordinators planned one epoch (one died): the living one's plan wins
            _log.Warning("{0}: a different slice of epoch {1} came from {2}: loading it in place of the one held", _stage, slice.PlanEpoch, Sender.Path);
        }
        if (slice.PlannedBytes > _budget)
        {
            Sender.Tell(new SliceFailed(slice.PlanEpoch, Path(), $"{_stage}: slice of {ByteSize.Format(slice.PlannedBytes)} exceeds its budget of {ByteSize.Format(_budget)}"));
            return;
        }
        // A new epoch of the same model (a recovery re-plan) keeps what this worker already holds: the loader takes
        // those tensors over and reads only what moved here. The old stage stops now (its requests resume elsewhere).
        bool sameModel = _slice is { } held ? held.Model == slice.Model && held.Variant == slice.Variant && held.DType == slice.DType
            : _record is { } kept && kept.Folder == slice.Model; // idle after a failed load: the record says which model
        var previous = _model is not null && sameModel && _device != "disk" ? _model : null;
        // The model's last committed record stays until the new epoch is committed: a coordinator that takes over
        // before then (this one died mid-recovery or mid-move) learns from it what the cluster serves.
        var record = sameModel && _record is { } r && r.PlanEpoch < slice.PlanEpoch ? r : null;
        ReleaseModel(keepTensors: previous is not null);
        _record = record;
        var replyTo = Sender;
        var self = Self;
        var system = Context.System;
        string selfPath = Path();
        var loader = new SliceLoader(_settings, _log, _stage, _device, system);
        Task.Run(() =>
            {
                try { return loader.Materialise(slice, replyTo, selfPath, previous); }
                finally { previous?.Release(); } // what the new slice did not take over
            })
            .PipeTo(self, replyTo, success: r => r, failure: ex => new SliceError(slice.PlanEpoch, $"{_stage}: {ShardPipeException.Describe(ex)}"));
        Become(() => Loading(replyTo, slice));
    }

    private void Loading(IActorRef replyTo, LoadSlice slice)
    {
        Receive<SliceReady>(r =>
        {
            _model = r.Model;
            _epoch = r.Epoch;
            _slice = slice;
            _executor.Install(new StageRunner(r.Model, r.Route, r.Epoch, PrefixStage.For(_settings.PrefixCache, r.Epoch)));
            _loaded = new SliceLoaded(r.Epoch, Path(), r.Bytes, r.Tensors, r.Streamed);
            _stepsAtLoad = NodeDiagnostics.For(Context.System).StepTimes.Count;
            OpenLinks(r.Route);
            replyTo.Tell(_loaded);
            _log.Info("{0}: slice of epoch {1} ready, {2} tensors, {3}", _stage, r.Epoch, r.Tensors, ByteSize.Format(r.Bytes));
            Become(Ready);
        });
        Receive<SliceError>(e =>
        {
            replyTo.Tell(new SliceFailed(e.Epoch, Path(), e.Reason));
            Become(Idle);
        });
        Receive<EvictTick>(_ => DropStaleChunks());
        Receive<RegisterTick>(_ => _coordinator.Tell(Registration()));
        Receive<WorkerRegistered>(_ => { });
        Receive<NodeDrained>(OnNodeDrained); // reported by the registrations during the load too
        ReceiveAny(_ => Stash.Stash());
    }

    /// <summary>Transfers whose sender stopped mid-way are dropped in every state, not only while serving.</summary>
    private void DropStaleChunks()
    {
        int n = _chunks.DropStale(_settings.RequestTimeout);
        if (n > 0) _log.Info("{0}: dropped {1} unfinished chunked message(s)", _stage, n);
    }

    private readonly ChunkAssembler _chunks = new();

    private void Ready()
    {
        Stash.UnstashAll();
        Registered();
        Receive<StageInput>(i => { if (FromMember()) _executor.Run(i); });
        Receive<StageBatch>(b => { if (FromMember()) _executor.Run(b); });
        Receive<MessageChunk>(Reassemble);
        Receive<ReleaseRequest>(r => { if (FromMember()) _executor.Release(r.RequestId); });
        Receive<LoadSlice>(OnLoadSlice);
        Receive<ReleaseSlice>(r =>
        {
            if (!FromCoordinator("a release")) return;
            Sender.Tell(new ModelUnloaded(""));
            ForgetRecord(r.PlanEpoch); // the model let go (an unload, a stale record)
            if (r.PlanEpoch < _epoch) return; // about an older slice than this one (a late or repeated release)
            ReleaseModel();
            Become(Idle);
        });
        Receive<EvictTick>(_ =>
        {
            DropStaleChunks();
            int n = _executor.EvictIdle(_settings.CacheIdleTimeout);
            if (n > 0) _log.Info("{0}: freed the KV caches of {1} abandoned request(s)", _stage, n);
        });
    }

    private string Path() => Akka.Serialization.Serialization.SerializedActorPath(Self);

    /// <summary>Slices, releases and commits come from the coordinator singleton only; anything else is logged and dropped.</summary>
    private bool FromCoordinator(string what)
    {
        if (SenderRules.IsCoordinator(Context.System, Sender)) return true;
        _log.Warning("{0}: refused {1} from {2}: not the cluster's coordinator", _stage, what, Sender.Path);
        return false;
    }

    /// <summary>Steps, chunks and link requests come from members (the previous stage, or the coordinator for a request's first step).</summary>
    private bool FromMember(string what = "a step")
    {
        if (SenderRules.IsMemberWithRole(Context.System, Sender, Roles.Worker) || SenderRules.IsMemberWithRole(Context.System, Sender, Roles.Coordinator)) return true;
        Refused(what, "not a member of this cluster");
        return false;
    }

    /// <summary>Logs and counts a refusal by intake.</summary>
    private void Refused(string what, string why)
    {
        NodeDiagnostics.For(Context.System).RefuseByIntake();
        _log.Warning("{0}: refused {1} from {2}: {3}", _stage, what, Sender.Path, why);
    }

    private void OnLoadSlice(LoadSlice slice)
    {
        if (!FromCoordinator("a slice")) Sender.Tell(new SliceFailed(slice.PlanEpoch, Path(), $"{_stage}: slices are taken only from the cluster's coordinator"));
        else
        {
            _seenEpoch = Math.Max(_seenEpoch, slice.PlanEpoch);
            StartLoad(slice);
        }
    }

    /// <summary>A release of epochs up to <paramref name="epoch"/> lets go of the kept record of one of them.</summary>
    private void ForgetRecord(int epoch)
    {
        if (_record is { } kept && kept.PlanEpoch <= epoch) _record = null;
    }

    /// <summary>Stops the stage and forgets the slice; its tensors are freed unless <paramref name="keepTensors"/> (a new slice takes them over).</summary>
    private void ReleaseModel(bool keepTensors = false)
    {
        _executor.Uninstall();
        if (!keepTensors) _model?.Release();
        _model = null;
        _loaded = null;
        _slice = null;
        _record = null;
        _epoch = -1;
    }

    protected override void PostStop()
    {
        ReleaseModel();
        _executor.Dispose();
    }
}
