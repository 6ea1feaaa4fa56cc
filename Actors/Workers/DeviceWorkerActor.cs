using Akka.Actor;
using Akka.Event;
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
    private SliceLoaded? _loaded;

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
        Timers.StartPeriodicTimer("register", new RegisterTick(), TimeSpan.Zero, TimeSpan.FromSeconds(1));
        Timers.StartPeriodicTimer("evict", new EvictTick(), TimeSpan.FromSeconds(10));
    }

    private RegisterWorker Registration() => new(_settings.DebugProtocolVersion ?? Protocol.Version, _settings.MaxFrameSize, _settings.NodeName,
        new[] { new WorkerDevice(_device, _budget, Akka.Serialization.Serialization.SerializedActorPath(Self), Unusable()) },
        _settings.LocalCheckpoints ? (_settings.ModelRoots.Count > 0 ? _settings.ModelRoots.ToArray() : new[] { "*" }) : Array.Empty<string>());

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
            Timers.Cancel("register");
            _log.Info("{0} registered with the coordinator", _stage);
            Become(Idle);
        });
        Receive<WorkerRefused>(r =>
        {
            Timers.Cancel("register");
            _log.Error("{0} refused by the coordinator: {1}", _stage, r.Reason);
        });
        Receive<EvictTick>(_ => { });
        ReceiveAny(_ => Stash.Stash());
    }

    /// <summary>A chunked message, once whole, is handled as if it had arrived in one piece (same sender).</summary>
    private void Reassemble(MessageChunk c)
    {
        try
        {
            if (_chunks.Add(c) is { } whole) Self.Forward(whole);
        }
        catch (ProtocolException ex)
        {
            _log.Warning("{0}: dropped a chunked message: {1}", _stage, ex.Message);
        }
    }

    /// <summary>Activation links: offers to peers (any state after registration), and this worker's own links.</summary>
    private void LinkHandling()
    {
        Receive<OpenLink>(o => Sender.Tell(_listener is null
            ? new LinkOffer(o.Target, "", 0, Array.Empty<byte>(), 0, $"activation links are off on {_settings.NodeName}")
            : new LinkOffer(o.Target, _listener.Host, _listener.Port, _listener.Offer(Self, Sender, _executor.Deliver), _listener.MaxFrameBytes)));
        Receive<LinkOffer>(_executor.LinkOffered);
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
        LinkHandling();
        Receive<MessageChunk>(Reassemble);
        Receive<LoadSlice>(StartLoad);
        Receive<ReleaseSlice>(_ => Sender.Tell(new ModelUnloaded("")));
        Receive<StageInput>(i => _executor.Fail(i, "no model slice is loaded on this stage"));
        Receive<ReleaseRequest>(_ => { });
        Receive<WorkerRegistered>(_ => { });
        Receive<RegisterTick>(_ => { });
        Receive<EvictTick>(_ => { });
    }

    private void StartLoad(LoadSlice slice)
    {
        if (slice.PlanEpoch == _epoch && _loaded is not null)
        {
            Sender.Tell(_loaded); // idempotent: this epoch's slice is already here
            return;
        }
        if (slice.PlannedBytes > _budget)
        {
            Sender.Tell(new SliceFailed(slice.PlanEpoch, Path(), $"{_stage}: slice of {ByteSize.Format(slice.PlannedBytes)} exceeds its budget of {ByteSize.Format(_budget)}"));
            return;
        }
        ReleaseModel();
        var replyTo = Sender;
        var self = Self;
        var system = Context.System;
        string selfPath = Path();
        var loader = new SliceLoader(_settings, _log, _stage, _device, system);
        Task.Run(() => loader.Materialise(slice, replyTo, selfPath))
            .PipeTo(self, replyTo, success: r => r, failure: ex => new SliceError(slice.PlanEpoch, $"{_stage}: {ex.GetBaseException().Message}"));
        Become(() => Loading(replyTo));
    }

    private void Loading(IActorRef replyTo)
    {
        Receive<SliceReady>(r =>
        {
            _model = r.Model;
            _epoch = r.Epoch;
            _executor.Install(new StageRunner(r.Model, r.Route));
            _loaded = new SliceLoaded(r.Epoch, Path(), r.Bytes, r.Tensors, r.Streamed);
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
        Receive<EvictTick>(_ => { });
        Receive<RegisterTick>(_ => { });
        ReceiveAny(_ => Stash.Stash());
    }

    private readonly ChunkAssembler _chunks = new();

    private void Ready()
    {
        Stash.UnstashAll();
        LinkHandling();
        Receive<StageInput>(i => _executor.Run(i, Sender));
        Receive<MessageChunk>(Reassemble);
        Receive<ReleaseRequest>(r => _executor.Release(r.RequestId));
        Receive<LoadSlice>(StartLoad);
        Receive<ReleaseSlice>(_ =>
        {
            ReleaseModel();
            Sender.Tell(new ModelUnloaded(""));
            Become(Idle);
        });
        Receive<EvictTick>(_ =>
        {
            _chunks.DropStale(_settings.RequestTimeout);
            int n = _executor.EvictIdle(_settings.CacheIdleTimeout);
            if (n > 0) _log.Info("{0}: freed the KV caches of {1} abandoned request(s)", _stage, n);
        });
        Receive<RegisterTick>(_ => { });
        Receive<WorkerRegistered>(_ => { });
    }

    private string Path() => Akka.Serialization.Serialization.SerializedActorPath(Self);

    private void ReleaseModel()
    {
        _executor.Uninstall();
        _model?.Release();
        _model = null;
        _loaded = null;
        _epoch = -1;
    }

    protected override void PostStop() => ReleaseModel();
}
