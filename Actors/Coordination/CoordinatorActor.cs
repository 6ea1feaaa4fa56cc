using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// The cluster singleton: message plumbing and timers over <see cref="CoordinatorState{TRequest,TCaller}"/>, where
/// every decision is made — who is registered and lost (<see cref="WorkerRegistry"/>), what a new coordinator adopts,
/// what a loss means and when a recovery starts or degrades (<see cref="ModelTracker"/>), and which request starts or
/// waits (<see cref="AdmissionQueue{TRequest,TCaller}"/>). Its behaviour is the tracker's <see cref="ClusterState"/>
/// (<see cref="Enter"/>); facts of a plan epoch no longer awaited are dropped in one place (<see cref="Behave"/>).
/// </summary>
public sealed class CoordinatorActor : ReceiveActor, IWithTimers, IWithStash
{
    public ITimerScheduler Timers { get; set; } = null!;
    public IStash Stash { get; set; } = null!;

    private sealed record Planned(LoadModel Request, int PlanEpoch, ModelDescription Model) : IPlanEpochFact;
    private sealed record PlanFailed(int PlanEpoch, string Reason) : IPlanEpochFact;
    private sealed record Replanned(int PlanEpoch, ModelDescription Model) : IPlanEpochFact;
    private sealed record ReplanFailed(int PlanEpoch, string Reason) : IPlanEpochFact;
    private sealed record LoadTimeout(int PlanEpoch) : IPlanEpochFact;
    private sealed record SweepRequests;
    private sealed record StartWindowOver;

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly NodeSettings _settings;
    private readonly CoordinatorState<IClientRequest, IActorRef> _state;
    private readonly Dictionary<string, IActorRef> _refs = new(StringComparer.Ordinal); // worker path → its actor
    private (LoadModel Request, IActorRef ReplyTo, DateTime Started)? _load; // a load a client waits for

    private ModelTracker Model => _state.Model;

    public CoordinatorActor(NodeSettings settings)
    {
        _settings = settings;
        _state = new(Protocol.Version, settings.MaxFrameSize, settings.MaxInFlight, settings.MaxQueued);
        Enter();
    }

    public static Props Props(NodeSettings settings) => Akka.Actor.Props.Create(() => new CoordinatorActor(settings));

    protected override void PreStart()
    {
        Timers.StartPeriodicTimer("sweep", new SweepRequests(), TimeSpan.FromSeconds(10));
        Timers.StartSingleTimer("start-window", new StartWindowOver(), _settings.StartWindow);
        Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents,
            typeof(ClusterEvent.MemberLeft), typeof(ClusterEvent.UnreachableMember), typeof(ClusterEvent.ReachableMember), typeof(ClusterEvent.MemberRemoved));
    }

    protected override void PostStop() => Cluster.Get(Context.System).Unsubscribe(Self);

    /// <summary>Behaves as the cluster's state says: one closed set for the behaviour and for status.</summary>
    private void Enter() => Become(Model.State switch
    {
        ClusterState.Starting => () => Behave(() => Receive<StartWindowOver>(_ => AdoptHeld()), load: _ => Stash.Stash()),
        ClusterState.Loading => () => Behave(Loading, load: Refuse),
        ClusterState.Recovering => () => Behave(Recovering, load: Refuse),
        ClusterState.Stopping => Stopping,
        _ => () => Behave(() => { }, load: StartPlanning), // empty, failed, ready, degraded: a new load replaces the model
    });

    /// <summary>A state's own handlers, between the one drop of stale plan facts and what every state answers.</summary>
    private void Behave(Action own, Action<LoadModel> load)
    {
        Receive<IPlanEpochFact>(f => !Model.IsCurrent(f.PlanEpoch), _ => { });
        own();
        Receive(load);
        Receive<ClusterStopping>(_ =>
        {
            Timers.CancelAll();
            Model.Stop();
            Sender.Tell(ClusterStopping.Instance);
            Enter();
        });
        Receive<RegisterWorker>(OnRegister);
        Receive<GetStatus>(s => Sender.Tell(_state.Status(s.RequestId)));
        Receive<IClientRequest>(r => Admit(r, Sender));
        Receive<Terminated>(t =>
        {
            var workers = _refs.Where(kv => kv.Value.Equals(t.ActorRef)).Select(kv => kv.Key).ToList();
            if (workers.Count > 0) Lost(workers, t.ActorRef.Path.Address.ToString());
            else CallerGone(t.ActorRef);
        });
        Receive<ClusterEvent.MemberLeft>(m => _state.Registry.NodeLeaving(m.Member.Address.ToString()));
        Receive<ClusterEvent.UnreachableMember>(u =>
        {
            // Recovery starts on unreachability, not on removal (which waits for the downing decision).
            var lost = _state.Registry.NodeUnreachable(u.Member.Address.ToString());
            if (lost.Count > 0) _log.Warning("node {0} is unreachable: its workers are lost", u.Member.Address);
            Lost(lost, u.Member.Address.ToString());
        });
        Receive<ClusterEvent.ReachableMember>(r => _state.Registry.NodeBack(r.Member.Address.ToString())); // its workers register again
        Receive<ClusterEvent.MemberRemoved>(r => _state.Registry.NodeBack(r.Member.Address.ToString()));
        Receive<UnloadModel>(u =>
        {
            if (_load is { } load) load.ReplyTo.Tell(new LoadFailed(load.Request.RequestId, "the load was cancelled by an unload"));
            _load = null;
            Unload();
            Sender.Tell(new ModelUnloaded(u.RequestId));
            Enter();
        });
        // A request whose stages went silent without dying is failed by its caller's stall timeout; free its slot too.
        Receive<SweepRequests>(_ => { foreach (var id in _state.Admission.Stale(DateTime.UtcNow, _settings.RequestTimeout * 10)) Finished(id); });
        Receive<GenerationDone>(d => Finished(d.RequestId));
        Receive<RequestFailed>(f => Finished(f.RequestId));
        Receive<ClusterEvent.IMemberEvent>(_ => { });
        Receive<ClusterEvent.CurrentClusterState>(_ => { });
        Receive<ModelUnloaded>(_ => { });
        Receive<StartWindowOver>(_ => { });
        Receive<IPlanEpochFact>(_ => { }); // current, but of no use in this state
    }

    private void Loading()
    {
        Receive<Planned>(OnPlanned);
        Receive<PlanFailed>(f => FailLoad(f.PlanEpoch, f.Reason));
        LoadFacts();
        Receive<SliceProgress>(p =>
        {
            // Progress goes to whoever asked for it; the load request itself is answered once, at the end.
            if (_load?.Request.ProgressTo is { } to) Resolve(to).Tell(p with { WorkerPath = _state.Describe(p.WorkerPath) });
        });
    }

    /// <summary>Lost modules are re-planned (the files are read off the actor's thread), then loaded.</summary>
    private void Recovering()
    {
        Receive<Replanned>(OnReplanned);
        Receive<ReplanFailed>(f => Degrade(f.PlanEpoch, f.Reason));
        LoadFacts();
    }

    private void LoadFacts()
    {
        Receive<SliceLoaded>(OnSliceLoaded);
        Receive<SliceFailed>(f => FailLoad(f.PlanEpoch, f.Reason));
        Receive<LoadTimeout>(t => FailLoad(t.PlanEpoch, $"load did not finish within {_settings.LoadTimeout.TotalSeconds:0} s " +
            $"(waiting for {string.Join(", ", Model.Pending?.Waiting.Keys.Select(_state.Describe) ?? Array.Empty<string>())})"));
    }

    /// <summary>The whole cluster is shutting down (<see cref="ClusterStopping"/>): no recovery starts; only status is answered.</summary>
    private void Stopping()
    {
        Receive<GetStatus>(s => Sender.Tell(_state.Status(s.RequestId)));
        Receive<IClientRequest>(r => Sender.Tell(new RequestFailed(r.RequestId, "coordinator", "the cluster is shutting down")));
        ReceiveAny(_ => { });
    }

    private void Refuse(LoadModel r) => Sender.Tell(new LoadFailed(r.RequestId, Model.Recovering
        ? $"the cluster is recovering {Model.Loaded?.Folder}; unload it first or retry when it is ready"
        : $"a load of {_load?.Request.Model} is in progress"));

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
        bool starting = Model.State == ClusterState.Starting;
        if (starting) Model.Report(from);
        var outcome = _state.Registry.Register(r, from);
        if (outcome is Registration.Refused refused)
        {
            _log.Error("refusing node {0} ({1}): {2}", r.NodeName, Sender.Path.Address, refused.Reason);
            Sender.Tell(new WorkerRefused(r.NodeName, refused.Reason));
            return;
        }
        var accepted = (Registration.Accepted)outcome;
        foreach (var d in accepted.RefusedDevices) _log.Error("refusing device {0}: {1}", d.Device, d.Reason);
        foreach (var w in accepted.Joined)
        {
            _refs[w.Path] = Sender;
            Context.Watch(Sender);
            _log.Info("worker {0} joined with {1}", w, ByteSize.Format(w.Budget));
        }
        Sender.Tell(accepted.RefusedDevices.Count > 0 && accepted.Joined.Count == 0 && r.Devices.All(d => _state.Registry.Worker(d.ActorPath) is null)
            ? new WorkerRefused(r.NodeName, string.Join("; ", accepted.RefusedDevices.Select(d => $"{d.Device}: {d.Reason}")))
            : new WorkerRegistered(r.NodeName));
        if (r.Holding is { } held && r.Devices.Length == 1 && _state.Registry.Worker(r.Devices[0].ActorPath) is not null)
        {
            string path = r.Devices[0].ActorPath;
            if (starting) Model.Report(from, path, held);
            else if (Model.Unused(held))
            {
                _log.Info("worker {0} holds a slice of epoch {1}, which is not served: released", _state.Describe(path), held.PlanEpoch);
                _refs[path].Tell(new ReleaseSlice(held.PlanEpoch));
            }
        }
        if (starting && Model.AllReported(UpWorkerNodes()))
        {
            Timers.Cancel("start-window");
            AdoptHeld();
        }
        else if (accepted.Joined.Count > 0 && Model.RetryOnCapacity) StartRecovery("capacity joined");
    }

    /// <summary>Worker nodes that are up and reachable: a new coordinator has heard what the cluster holds once each reported.</summary>
    private List<string> UpWorkerNodes()
    {
        var state = Cluster.Get(Context.System).State;
        return state.Members.Where(m => m.Status == MemberStatus.Up && m.HasRole("worker") && !state.Unreachable.Contains(m)).Select(m => m.Address.ToString()).ToList();
    }

    /// <summary>A new coordinator (first start, or the singleton moved here) takes over the newest model the workers hold.</summary>
    private void AdoptHeld()
    {
        var adoption = Model.Adopt(_refs.ContainsKey);
        foreach (var (path, epoch) in adoption.Release) _refs[path].Tell(new ReleaseSlice(epoch));
        Stash.UnstashAll();
        if (adoption.Model is { } model)
        {
            _log.Info("adopted model {0} (epoch {1}) from the workers{2}", model.Folder, model.PlanEpoch,
                adoption.Missing.Count > 0 ? $"; {adoption.Missing.Count} stage(s) missing: recovering" : "");
            if (adoption.Missing.Count > 0)
            {
                StartRecovery($"stage(s) {string.Join(", ", adoption.Missing.Select(_state.Describe))} did not report after the coordinator moved");
                return;
            }
            Commit(model);
        }
        Enter();
    }

    private void StartPlanning(LoadModel request)
    {
        Unload();
        int epoch = Model.BeginPlan();
        _load = (request, Sender, DateTime.UtcNow);
        Func<string, bool> local = _settings.HasLocal;
        // Reading config.json and the checkpoint's headers is file I/O: off the actor's thread.
        Task.Run(() => ModelDescription.Read(request, local)).PipeTo(Self,
            success: m => new Planned(request, epoch, m), failure: ex => new PlanFailed(epoch, ex.GetBaseException().Message));
        Enter();
    }

    private void OnPlanned(Planned p)
    {
        LoadPlan plan;
        try { plan = SlicePlanner.Plan(p.Model, p.Request, _state.Registry.Workers, p.PlanEpoch); }
        catch (Exception ex) // a bad request must never restart the coordinator (it would forget every worker)
        {
            FailLoad(p.PlanEpoch, ex.Message);
            return;
        }
        SendSlices(plan);
        _log.Info("loading {0} (epoch {1}) on {2} workers", p.Request.Model, p.PlanEpoch, plan.Slices.Count);
    }

    private void SendSlices(LoadPlan plan)
    {
        foreach (var (worker, slice) in plan.Slices) _refs[worker.Path].TellChunked(slice); // a big model's slice index may exceed one frame
        Model.BeginLoad(plan.Slices.ToDictionary(s => s.Worker.Path, s => s.Slice.PlannedBytes), plan.Result);
        Timers.StartSingleTimer("load-timeout", new LoadTimeout(plan.Result.PlanEpoch), _settings.LoadTimeout);
    }

    private void OnSliceLoaded(SliceLoaded s)
    {
        // The worker is known by the actor that sent the fact, not by the path it names.
        string? path = _refs.FirstOrDefault(kv => kv.Value.Equals(Sender)).Key;
        bool recovery = Model.Recovering;
        if (path is null || _state.SliceLoaded(path, s) is not { } loaded) return;
        Timers.Cancel("load-timeout");
        Commit(loaded);
        Enter();
        if (recovery)
        {
            _log.Warning("model {0} recovered (epoch {1}) in {2:0.00} s: moved {3}", loaded.Folder, loaded.PlanEpoch, (DateTime.UtcNow - Model.RecoveryStarted).TotalSeconds,
                loaded.Moved is { Length: > 0 } m ? string.Join(", ", m.Select(e => $"{e.Module} → {e.Device}")) : "nothing");
            // Workers that hold a slice of the old epoch and are not in the new plan free it.
            foreach (var r in _refs.Where(kv => loaded.Stages.All(st => st.WorkerPath != kv.Key)).Select(kv => kv.Value).Distinct())
                r.Tell(new ReleaseSlice(loaded.PlanEpoch - 1)); // any older epoch's slice
            foreach (var (_, request, caller) in _state.Admission.Drain(Model.State, DateTime.UtcNow)) Start(request, caller);
        }
        else if (_load is { } load)
        {
            double seconds = (DateTime.UtcNow - load.Started).TotalSeconds;
            _log.Info("model {0} ready (epoch {1}) in {2:0.00} s", loaded.Folder, loaded.PlanEpoch, seconds);
            load.ReplyTo.Tell(new ModelLoaded(load.Request.RequestId, loaded.PlanEpoch, loaded.Devices, seconds, loaded.Stages, loaded.DeviceMap));
            _load = null;
        }
    }

    /// <summary>Every stage worker keeps the served model's record, so that a coordinator elsewhere can serve it again.</summary>
    private void Commit(ModelRecord model)
    {
        var commit = new ModelCommitted(model);
        foreach (var path in model.Stages.Select(s => s.WorkerPath).Distinct())
            if (_refs.TryGetValue(path, out var r)) r.TellChunked(commit);
    }

    private void FailLoad(int epoch, string reason)
    {
        bool sent = Model.Pending is not null;
        switch (Model.FailLoad(epoch, reason))
        {
            case LoadFailure.Recover:
                Timers.Cancel("load-timeout");
                _log.Warning("recovery load (epoch {0}) failed: {1}", epoch, reason);
                StartRecovery(reason);
                break;
            case LoadFailure.Failed:
                Timers.Cancel("load-timeout");
                if (sent)
                {
                    _log.Warning("load of {0} failed: {1}", _load?.Request.Model, reason);
                    foreach (var r in _refs.Values.Distinct()) r.Tell(new ReleaseSlice(epoch)); // never a half-loaded model
                }
                if (_load is { } load) load.ReplyTo.Tell(new LoadFailed(load.Request.RequestId, reason));
                _load = null;
                Enter();
                break;
        }
    }

    /// <summary>Workers lost (their node crashed, was cut off, paused past the failure detector, or left).</summary>
    private void Lost(IReadOnlyList<string> paths, string node)
    {
        if (paths.Count == 0) return;
        bool graceful = _state.Registry.IsLeaving(node);
        var names = paths.Select(_state.Describe).ToList();
        foreach (var name in names)
            if (graceful) _log.Info("worker {0} left the cluster", name);
            else _log.Warning("worker {0} was lost", name);
        foreach (var path in paths) _refs.Remove(path);
        string what = $"node {names[0].Split('/')[0]} ({string.Join(", ", names)}) was lost";
        switch (_state.Lose(paths))
        {
            case Loss.FailsLoad: FailLoad(Model.Pending!.Epoch, $"{what} during the load"); break;
            case Loss.Recover: StartRecovery(what); break;
        }
    }

    /// <summary>
    /// The served model lost stages: re-plan the lost modules onto the survivors under a new epoch (only what moved
    /// is loaded), or mark it degraded when they lack the memory.
    /// </summary>
    private void StartRecovery(string why)
    {
        var served = Model.Loaded!;
        int epoch = Model.BeginRecovery(DateTime.UtcNow);
        // Callers of requests in flight learn now (not when their own watch of the stages fires) and resume once ready.
        foreach (var (id, caller) in _state.Admission.Interrupt())
            caller.Tell(new RequestFailed(id, "coordinator", $"{why}; the model is being recovered", Retryable: true));
        _log.Warning("recovering {0} (epoch {1} → {2}): {3}", served.Folder, served.PlanEpoch, epoch, why);
        Enter();
        if (served.Request is not { } request)
        {
            Degrade(epoch, $"{why}; no load request is known for {served.Folder}: load it again");
            return;
        }
        Func<string, bool> local = _settings.HasLocal;
        Task.Run(() => ModelDescription.Read(request, local)).PipeTo(Self,
            success: m => new Replanned(epoch, m), failure: ex => new ReplanFailed(epoch, ex.GetBaseException().Message));
    }

    private void OnReplanned(Replanned r)
    {
        LoadPlan plan;
        try { plan = SlicePlanner.Replan(r.Model, Model.Loaded!, _state.Registry.Workers, Model.Holders, r.PlanEpoch).Plan; }
        catch (Exception ex)
        {
            Degrade(r.PlanEpoch, ex.Message);
            return;
        }
        SendSlices(plan);
        _log.Info("recovery plan (epoch {0}): {1}", r.PlanEpoch, plan.Result.Moved is { Length: > 0 } m ? string.Join(", ", m.Select(e => $"{e.Module} → {e.Device}")) : "nothing moves");
    }

    private void Degrade(int epoch, string reason)
    {
        string detail = $"degraded: {reason} (plan epoch {epoch}); the model recovers by itself when a node with enough memory joins";
        if (!Model.Degrade(epoch, detail)) return;
        _log.Error("model {0} {1}", Model.Loaded?.Folder, detail);
        Enter();
    }

    /// <summary>Forgets the model: every worker frees its slices of it; queued requests fail (those in flight fail by themselves).</summary>
    private void Unload()
    {
        Timers.Cancel("load-timeout");
        foreach (int epoch in new[] { Model.Loaded?.PlanEpoch, Model.Pending?.Epoch }.OfType<int>().Distinct())
            foreach (var r in _refs.Values.Distinct()) r.Tell(new ReleaseSlice(epoch));
        foreach (var (id, caller) in _state.Admission.Clear())
            caller.Tell(new RequestFailed(id, "coordinator", "the model was unloaded before this request started"));
        Model.Unload();
    }

    private void Admit(IClientRequest request, IActorRef caller)
    {
        string state = Model.State.ToString().ToLowerInvariant();
        switch (_state.Admission.Admit(request.RequestId, request, caller, Model.State, DateTime.UtcNow))
        {
            case Admission.Start: Start(request, caller); break;
            case Admission.Queue: Context.Watch(caller); break; // a caller that goes away while queued withdraws its request
            case Admission.Busy:
                caller.Tell(new RequestFailed(request.RequestId, "coordinator", $"busy: {_state.Admission.InFlight} requests in flight and {_state.Admission.Queued} queued; retry later"));
                break;
            case Admission.Starting:
                caller.Tell(new RequestFailed(request.RequestId, "coordinator", "the coordinator is starting; retry shortly", Retryable: true));
                break;
            case Admission.Recovering:
                caller.Tell(new RequestFailed(request.RequestId, "coordinator", $"the model is {state}: {Model.Failure ?? "lost stages are being re-planned"}", Retryable: true));
                break;
            default:
                caller.Tell(new RequestFailed(request.RequestId, "coordinator", $"no model is loaded (state: {state}{(Model.Failure is { } f ? $": {f}" : "")})"));
                break;
        }
    }

    /// <summary>
    /// A caller went away (its client exited, crashed or gave up): its requests are cancelled on every stage — the
    /// stages drop their caches and any later step of them — and their slots freed; its queued ones withdrawn.
    /// </summary>
    private void CallerGone(IActorRef caller)
    {
        var (running, withdrawn) = _state.Admission.CallerGone(caller);
        foreach (var id in running)
        {
            if (Model.Loaded is { } model)
                foreach (var stage in model.Route.Select(h => h.WorkerPath).Distinct()) Resolve(stage).Tell(new ReleaseRequest(id));
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
        if (step is null)
        {
            caller.Tell(new RequestFailed(request.RequestId, "coordinator", error!));
            Finished(request.RequestId);
            return;
        }
        Context.Watch(caller); // a caller that goes away cancels its requests
        Resolve(model.Route[0].WorkerPath).TellChunked(step, Self); // from the coordinator: stages take steps only from members
    }

    private IActorRef Resolve(string path) => ((ExtendedActorSystem)Context.System).Provider.ResolveActorRef(path);
}
