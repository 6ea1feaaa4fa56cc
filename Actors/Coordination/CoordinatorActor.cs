using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using ShardPipe.Actors.Membership;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// The cluster singleton: message plumbing and timers over <see cref="CoordinatorState{TCaller}"/>, where every
/// decision is made — who is registered and lost (<see cref="WorkerRegistry"/>), what a new coordinator adopts, what a
/// loss means, when a recovery starts, is planned again or degrades (<see cref="ModelTracker"/>), and which request
/// starts or waits (<see cref="AdmissionQueue{TRequest,TCaller}"/>). Its behaviour is the tracker's
/// <see cref="ClusterState"/> (<see cref="Enter"/>); facts of a plan epoch no longer awaited are dropped in one place
/// (<see cref="Behave"/>).
/// </summary>
public sealed partial class CoordinatorActor : ReceiveActor, IWithTimers, IWithStash
{
    public ITimerScheduler Timers { get; set; } = null!;
    public IStash Stash { get; set; } = null!;

    private sealed record Described(int PlanEpoch, LoadModel Request, ModelDescription Model) : IPlanEpochFact;
    private sealed record DescribeFailed(int PlanEpoch, string Reason) : IPlanEpochFact;
    private sealed record LoadTimeout(int PlanEpoch) : IPlanEpochFact;
    private sealed record StartWindowOver;

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly NodeSettings _settings;
    private readonly CoordinatorState<IActorRef> _state;
    private readonly WorkerRefs _refs = new();
    private (LoadModel Request, IActorRef ReplyTo, DateTime Started)? _load; // the load a client waits for

    private ModelTracker Model => _state.Model;

    public CoordinatorActor(NodeSettings settings)
    {
        _settings = settings;
        _state = new(Protocol.Version, settings.MaxFrameSize, settings.MaxInFlight, settings.MaxQueued, settings.KvCacheBudget, settings.PlacementBalance);
        Enter();
    }

    public static Props Props(NodeSettings settings) => Akka.Actor.Props.Create(() => new CoordinatorActor(settings));

    protected override void PreStart()
    {
        _log.Info("coordinator started on {0}", Cluster.Get(Context.System).SelfAddress);
        Timers.StartSingleTimer("start-window", new StartWindowOver(), _settings.StartWindow);
        Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents,
            typeof(ClusterEvent.MemberLeft), typeof(ClusterEvent.UnreachableMember), typeof(ClusterEvent.ReachableMember), typeof(ClusterEvent.MemberRemoved),
            typeof(ClusterEvent.MemberDowned));
    }

    protected override void PostStop() => Cluster.Get(Context.System).Unsubscribe(Self);

    /// <summary>Behaves as the cluster's state says: one closed set for the behaviour and for status.</summary>
    private void Enter() => Become(Model.State switch
    {
        ClusterState.Starting => () => Behave(() => Receive<StartWindowOver>(_ => AdoptHeld()), load: _ => Stash.Stash()),
        ClusterState.Loading or ClusterState.Recovering or ClusterState.Moving => () => Behave(Loading, load: Refuse),
        ClusterState.Stopping => () => // the whole cluster is shutting down (ClusterStopping): no recovery starts; only status is answered
        {
            Receive<GetStatus>(s => Sender.Tell(_state.Status(s.RequestId)));
            Receive<IClientRequest>(r => Sender.Tell(new RequestFailed(r.RequestId, "coordinator", "the cluster is shutting down")));
            ReceiveAny(_ => { });
        },
        _ => () => Behave(() => { }, load: StartPlanning), // empty, failed, ready, degraded: a new load replaces the model
    });

    /// <summary>A state's own handlers, between the one drop of stale plan facts and what every state answers.</summary>
    private void Behave(Action own, Action<LoadModel> load)
    {
        Receive<IPlanEpochFact>(f => !Model.IsCurrent(f.PlanEpoch), _ => { });
        own();
        Receive(load);
        Receive<ClusterStopping>(_ => { Timers.CancelAll(); Model.Stop(); Sender.Tell(ClusterStopping.Instance); Enter(); });
        Receive<RegisterWorker>(OnRegister);
        Receive<GetStatus>(s => Sender.Tell(_state.Status(s.RequestId)));
        Receive<IClientRequest>(Admit);
        Receive<Terminated>(t => { if (_refs.PathsOf(t.ActorRef) is { Count: > 0 } ws) Lost(ws, t.ActorRef.Path.Address.ToString()); else CallerGone(t.ActorRef); });
        Receive<ClusterEvent.MemberLeft>(m => _state.Registry.NodeLeaving(m.Member.Address.ToString()));
        Receive<ClusterEvent.UnreachableMember>(u =>
        {
            // Recovery starts on unreachability, not on removal (which waits for the downing decision).
            var lost = _state.Registry.NodeUnreachable(u.Member.Address.ToString());
            if (lost.Count > 0) _log.Warning("node {0} is unreachable: its workers are lost", u.Member.Address);
            Lost(lost, u.Member.Address.ToString());
        });
        // A node downed before the failure detector gave up on it (the crash probe found its process gone): lost now.
        Receive<ClusterEvent.MemberDowned>(d =>
        {
            if (d.Member.Address == Cluster.Get(Context.System).SelfAddress) return;
            var lost = _state.Registry.NodeUnreachable(d.Member.Address.ToString());
            if (lost.Count > 0) _log.Warning("node {0} was downed: its workers are lost", d.Member.Address);
            Lost(lost, d.Member.Address.ToString());
        });
        Receive<ClusterEvent.ReachableMember>(r => _state.Registry.NodeBack(r.Member.Address.ToString())); // its workers register again
        Receive<ClusterEvent.MemberRemoved>(r =>
        {
            Lost(_state.Registry.WorkersOn(r.Member.Address.ToString()), r.Member.Address.ToString()); // removed before anything else said so
            _state.Registry.NodeBack(r.Member.Address.ToString());
            _state.NodeMoves.NodeRemoved(r.Member.Address.ToString());
        });
        Receive<UnloadModel>(u =>
        {
            AnswerLoad(new LoadFailed(_load?.Request.RequestId ?? "", "the load was cancelled by an unload"));
            Unload();
            Sender.Tell(new ModelUnloaded(u.RequestId));
            Enter();
        });
        Receive<GenerationDone>(d => Finished(d.RequestId));
        Receive<RequestFailed>(f => Finished(f.RequestId));
        MoveHandling();
        ReceiveAny(_ => { }); // other member events, late timers, a worker's ModelUnloaded, a current plan fact of no use here
    }

    /// <summary>A plan (first, or of a recovery) made off the actor's thread, then its slices loaded.</summary>
    private void Loading()
    {
        Receive<Described>(d => SendSlices(_state.Plan(d.Request, d.Model, d.PlanEpoch)));
        Receive<DescribeFailed>(f => FailLoad(f.PlanEpoch, f.Reason));
        Receive<SliceLoaded>(OnSliceLoaded);
        Receive<SliceFailed>(f => FailLoad(f.PlanEpoch, f.Reason));
        Receive<LoadTimeout>(t => FailLoad(t.PlanEpoch, _state.LoadTimeoutReason(_settings.LoadTimeout)));
        // Progress goes to whoever asked for it; the load request itself is answered once, at the end.
        Receive<SliceProgress>(p => { if (_load?.Request.ProgressTo is { } to) Resolve(to).Tell(p with { WorkerPath = _state.Describe(p.WorkerPath) }); });
    }

    private void Refuse(LoadModel r) => Sender.Tell(new LoadFailed(r.RequestId, _state.LoadRefusal(_load?.Request.Model)));

    private void OnRegister(RegisterWorker r)
    {
        string from = SenderRules.NodeOf(Context.System, Sender).ToString();
        if (_state.Registry.IsUnreachable(from)) return; // lost until the failure detector says otherwise
        if (SenderRules.RegistrationProblem(Context.System, Sender, r.Devices.Select(d => d.ActorPath)) is { } intake)
        {
            _log.Warning("refused a registration as {0}: {1}", r.NodeName, intake);
            Sender.Tell(new WorkerRefused(r.NodeName, $"registration refused: {intake}", Transient: true));
            return;
        }
        var reg = _state.Register(r, from, () => SenderRules.ReachableUp(Context.System, Roles.Worker)); // a new coordinator waits to hear from each
        if (reg.RefusedNode is { } why) _log.Error("refusing node {0} ({1}): {2}", r.NodeName, Sender.Path.Address, why);
        foreach (var d in reg.RefusedDevices) _log.Error("refusing device {0}: {1}", d.Device, d.Reason);
        foreach (var w in reg.Joined) { _refs.Add(w.Path, Sender); Context.Watch(Sender); _log.Info("worker {0} joined with {1}", w, ByteSize.Format(w.Budget)); }
        Sender.Tell(reg.Reply);
        if (reg.Release is var (path, epoch))
        {
            _log.Info("worker {0} holds a slice of epoch {1}, which is not served: released", _state.Describe(path), epoch);
            _refs.Tell(path, new ReleaseSlice(epoch));
        }
        if (reg.DrainLearned) _log.Info("{0} is being drained (its workers said so): no plan puts anything on it", r.NodeName);
        if (reg.Adopt) AdoptHeld();
        else if (reg.RetryRecovery) StartRecovery("capacity joined");
        else if (reg.DrainLearned) ContinueDrains();
        else if (reg.Joined.Count > 0 && _settings.Rebalance.Auto) AskMove(null, null); // a node joined: rebalance if it gains enough
    }

    /// <summary>A new coordinator (first start, or the singleton moved here) takes over the newest model the workers hold.</summary>
    private void AdoptHeld()
    {
        Timers.Cancel("start-window");
        var adoption = Model.Adopt(_refs.Has);
        foreach (var (path, epoch) in adoption.Release) _refs.Tell(path, new ReleaseSlice(epoch));
        Stash.UnstashAll();
        if (adoption.Model is { } model)
        {
            _log.Info("adopted model {0} (epoch {1}) from the workers{2}", model.Folder, model.PlanEpoch,
                adoption.Missing.Count > 0 ? $"; {adoption.Missing.Count} stage(s) missing: recovering" : "");
            if (adoption.Missing.Count == 0) _refs.Commit(model);
        }
        // A drain whose coordinator died mid-move: its node's workers said so; it is finished, not forgotten.
        foreach (var node in _state.ResumeDrains()) _log.Info("{0} is being drained (its workers said so): no plan puts anything on it", node);
        if (adoption.Missing.Count > 0) StartRecovery($"stage(s) {string.Join(", ", adoption.Missing.Select(_state.Describe))} hold no slice of epoch {adoption.Model!.PlanEpoch} after the coordinator moved");
        else
        {
            Enter();
            ContinueDrains();
        }
    }

    private void StartPlanning(LoadModel request)
    {
        if (!ClusterView.HasQuorum(Context.System, _state.Registry.IsUnreachable))
        {
            Sender.Tell(new LoadFailed(request.RequestId, "this node's side of the cluster lacks a majority of its members: it plans nothing; retry through another node"));
            return;
        }
        Unload();
        _load = (request, Sender, DateTime.UtcNow);
        Describe(request, Model.BeginPlan());
        Enter();
    }

    /// <summary>Reads the model's config and checkpoint headers off the actor's thread (file I/O); the outcome comes back as a message.</summary>
    private void Describe(LoadModel request, int epoch)
    {
        Func<string, bool> local = _settings.HasLocal;
        Task.Run(() => ModelDescription.Read(request, local)).PipeTo(Self,
            success: m => new Described(epoch, request, m), failure: ex => new DescribeFailed(epoch, ShardPipeException.Describe(ex)));
    }

    /// <summary>A plan goes out (its slices to the workers, a timer for the whole load); a plan that could not be made fails the load.</summary>
    private void SendSlices((LoadPlan? Plan, int Epoch, string? Error) planned)
    {
        if (planned.Plan is not { } plan) { FailLoad(planned.Epoch, planned.Error!); return; }
        if (Model.Recovering) _log.Info("recovery plan (epoch {0}): {1}", plan.Result.PlanEpoch, CoordinatorState<IActorRef>.Moves(plan.Result, "nothing moves"));
        else if (!Model.Moving) _log.Info("loading {0} (epoch {1}) on {2} workers", plan.Result.Folder, plan.Result.PlanEpoch, plan.Slices.Count);
        _refs.Send(plan);
        Model.BeginLoad(plan.Slices.ToDictionary(s => s.Worker.Path, s => s.Slice.PlannedBytes), plan.Result);
        Timers.StartSingleTimer("load-timeout", new LoadTimeout(plan.Result.PlanEpoch), _settings.LoadTimeout);
    }

    private void OnSliceLoaded(SliceLoaded s)
    {
        bool recovery = Model.Recovering, moving = Model.Moving;
        if (_refs.PathOf(Sender) is not { } path || _state.SliceLoaded(path, s) is not { } loaded) return;
        Timers.Cancel("load-timeout");
        _refs.Commit(loaded);
        Enter();
        if (moving) MoveServed(loaded);
        else if (recovery)
        {
            _log.Warning("model {0} recovered (epoch {1}) in {2:0.00} s: moved {3}", loaded.Folder, loaded.PlanEpoch,
                (DateTime.UtcNow - Model.RecoveryStarted).TotalSeconds, CoordinatorState<IActorRef>.Moves(loaded, "nothing"));
            // Workers that hold a slice of the old epoch and are not in the new plan free it (any older epoch's slice).
            _refs.Release(loaded.PlanEpoch - 1, where: w => loaded.Stages.All(st => st.WorkerPath != w));
            foreach (var (_, request, caller) in _state.Admission.Drain(Model.State, DateTime.UtcNow)) Start(request, caller);
            TellToLeave(_state.NodeMoves.PendingLeave()); // a drain that a recovery overtook: the node is no longer needed
            _state.NodeMoves.Leaving();
        }
        else if (_load is { } load)
        {
            double seconds = (DateTime.UtcNow - load.Started).TotalSeconds;
            _log.Info("model {0} ready (epoch {1}) in {2:0.00} s", loaded.Folder, loaded.PlanEpoch, seconds);
            AnswerLoad(new ModelLoaded(load.Request.RequestId, loaded.PlanEpoch, loaded.Devices, seconds, loaded.Stages, loaded.DeviceMap));
        }
    }

    /// <summary>The client that asked for the load in progress gets its one answer.</summary>
    private void AnswerLoad(object answer) { _load?.ReplyTo.Tell(answer); _load = null; }

    private void FailLoad(int epoch, string reason)
    {
        bool sent = Model.Pending is not null;
        var failure = Model.FailLoad(epoch, reason);
        if (failure != LoadFailure.Stale) Timers.Cancel("load-timeout");
        switch (failure)
        {
            case LoadFailure.Recover: _log.Warning("recovery load (epoch {0}) failed: {1}", epoch, reason); StartRecovery(reason); break;
            case LoadFailure.Degraded: _log.Error("model {0} {1}", Model.Loaded?.Folder, Model.Failure); Enter(); break;
            case LoadFailure.Failed:
                if (sent) { _log.Warning("load of {0} failed: {1}", _load?.Request.Model, reason); _refs.Release(epoch); } // never a half-loaded model
                AnswerLoad(new LoadFailed(_load?.Request.RequestId ?? "", reason));
                Enter();
                break;
        }
    }

    /// <summary>Workers lost (their node crashed, was cut off, paused past the failure detector, or left).</summary>
    private void Lost(IReadOnlyList<string> paths, string node)
    {
        if (paths.Count == 0) return;
        string what = _state.LossSummary(paths);
        foreach (var name in paths.Select(_state.Describe))
            if (_state.Registry.IsLeaving(node)) _log.Info("worker {0} left the cluster", name);
            else _log.Warning("worker {0} was lost", name);
        _refs.Remove(paths);
        var loss = _state.Lose(paths);
        if (loss == Loss.FailsLoad) FailLoad(Model.Pending!.Epoch, $"{what} during the load");
        else if (loss == Loss.Recover) StartRecovery(what);
    }

    /// <summary>The served model lost stages: its lost modules are re-planned onto the survivors under a new epoch (only what moved is loaded).</summary>
    private void StartRecovery(string why)
    {
        if (!ClusterView.HasQuorum(Context.System, _state.Registry.IsUnreachable)) { AwaitQuorum(why); return; }
        var served = Model.Loaded!;
        AbandonMove($"a recovery began ({why})");
        int epoch = Model.BeginRecovery(DateTime.UtcNow);
        // Callers of requests in flight learn now (not when their own watch of the stages fires) and resume once ready.
        foreach (var (id, caller) in _state.Admission.Interrupt()) caller.Tell(new RequestFailed(id, "coordinator", $"{why}; the model is being recovered", Retryable: true));
        _log.Warning("recovering {0} (epoch {1} → {2}): {3}", served.Folder, served.PlanEpoch, epoch, why);
        Enter();
        if (served.Request is { } request) Describe(request, epoch);
        else FailLoad(epoch, $"{why}; no load request is known for {served.Folder}: load it again");
    }

    /// <summary>
    /// Stages were lost, but this side of the cluster is not the one keep-majority keeps: the other side may already run
    /// a coordinator (fast failover), so this one plans nothing — degraded until workers register again (the cut healed)
    /// or this node is downed.
    /// </summary>
    private void AwaitQuorum(string why)
    {
        Model.AwaitQuorum(why, DateTime.UtcNow);
        foreach (var (id, caller) in _state.Admission.Interrupt()) caller.Tell(new RequestFailed(id, "coordinator", $"{why}; {Model.Failure}", Retryable: true));
        _log.Warning("{0}: {1}", why, Model.Failure);
        Enter();
    }

    /// <summary>Forgets the model: every worker frees its slices of it; queued requests fail (those in flight fail by themselves).</summary>
    private void Unload()
    {
        Timers.Cancel("load-timeout");
        AbandonMove("the model was unloaded or replaced");
        if (Model.Epoch > 0) _refs.Release(Model.Epoch); // every epoch up to the newest: uncommitted slices and kept records too
        foreach (var (id, caller) in _state.Admission.Clear()) caller.Tell(new RequestFailed(id, "coordinator", "the model was unloaded before this request started"));
        Model.Unload();
    }

    private void Admit(IClientRequest request)
    {
        var (admission, refusal) = _state.Admit(request, Sender, DateTime.UtcNow);
        if (admission == Admission.Start) Start(request, Sender);
        else if (admission == Admission.Queue) Context.Watch(Sender); // a caller that goes away while queued withdraws its request
        else Sender.Tell(refusal);
    }

    /// <summary>A caller went away (exited, crashed, gave up): its requests are cancelled on every stage (their caches and later steps dropped), its queued ones withdrawn.</summary>
    private void CallerGone(IActorRef caller)
    {
        var (running, withdrawn) = _state.Admission.CallerGone(caller);
        foreach (var id in running)
        {
            foreach (var stage in Model.Loaded?.Route.Select(h => h.WorkerPath).Distinct() ?? []) Resolve(stage).Tell(new ReleaseRequest(id));
            _log.Info("request {0} cancelled: its caller is gone", id);
            Finished(id);
        }
        foreach (var id in withdrawn) _log.Info("queued request {0} withdrawn: its caller is gone", id);
    }

    private void Finished(string requestId)
    {
        var (idle, next) = _state.Admission.Finish(requestId, Model.State, DateTime.UtcNow);
        if (idle is not null) Context.Unwatch(idle);
        foreach (var (_, request, caller) in next) Start(request, caller);
    }

    private void Start(IClientRequest request, IActorRef caller)
    {
        var model = Model.Loaded!;
        var (step, error) = FirstStep.Build(request, model, Akka.Serialization.Serialization.SerializedActorPath(caller),
            Akka.Serialization.Serialization.SerializedActorPath(Self), (int)Math.Min(int.MaxValue, Math.Max(_settings.MaxNewTokens, model.MaxPositions)));
        if (step is null) { caller.Tell(new RequestFailed(request.RequestId, "coordinator", error!, Invalid: true)); Finished(request.RequestId); return; }
        Context.Watch(caller); // a caller that goes away cancels its requests
        Resolve(model.Route[0].WorkerPath).TellChunked(step, Self); // from the coordinator: stages take steps only from members
    }

    private IActorRef Resolve(string path) => ((ExtendedActorSystem)Context.System).Provider.ResolveActorRef(path);
}
