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
/// The cluster singleton, a thin shell over <see cref="CoordinatorState"/>: registers device workers, plans a
/// model over them (<see cref="SlicePlanner"/>; the files are read off its thread), hands out slices and tracks
/// the load to ready or failed, admits requests to the pipeline's first hop, and recovers a served model when
/// stages are lost. States: <see cref="Starting"/> (a new coordinator hears what the workers hold), <see cref="Idle"/>
/// (no model, or the last load failed), <see cref="Planning"/>, <see cref="Loading"/>, <see cref="Ready"/>,
/// <see cref="Replanning"/> (lost modules being re-planned) and <see cref="Degraded"/> (the survivors lack memory).
/// </summary>
public sealed class CoordinatorActor : ReceiveActor, IWithTimers, IWithStash
{
    public ITimerScheduler Timers { get; set; } = null!;
    public IStash Stash { get; set; } = null!;

    private sealed record Planned(LoadModel Request, IActorRef ReplyTo, int Epoch, ModelDescription Model);
    private sealed record PlanFailed(LoadModel Request, IActorRef ReplyTo, string Reason);
    private sealed record Replanned(int Epoch, ModelDescription Model);
    private sealed record ReplanFailed(int Epoch, string Reason);
    private sealed record LoadTimeout(int Epoch);
    private sealed record SweepRequests;
    private sealed record StartWindowOver;

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly NodeSettings _settings;
    private readonly CoordinatorState _state;
    private readonly Dictionary<string, IActorRef> _refs = new(StringComparer.Ordinal); // worker path → its actor
    private readonly Dictionary<string, (IClientRequest Request, IActorRef Caller)> _waiting = new(StringComparer.Ordinal); // queued
    private readonly Dictionary<string, IActorRef> _running = new(StringComparer.Ordinal); // started: request id → caller
    private readonly HashSet<Address> _leaving = new(); // nodes that announced a graceful leave
    private readonly HashSet<Address> _unreachable = new(); // nodes the failure detector gave up on (their workers are lost)
    private readonly Dictionary<string, HeldSlice> _held = new(StringComparer.Ordinal); // what workers reported while starting
    private readonly HashSet<Address> _reported = new(); // worker nodes heard from while starting
    private (LoadModel Request, IActorRef ReplyTo, DateTime Started)? _load;
    private DateTime _recoveryStarted;

    public CoordinatorActor(NodeSettings settings)
    {
        _settings = settings;
        _state = new CoordinatorState(Protocol.Version, settings.MaxFrameSize, settings.MaxInFlight, settings.MaxQueued);
        _state.BeginStart();
        Starting();
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

    /// <summary>What every state answers: registrations, status, membership, departures, unload.</summary>
    private void Always()
    {
        Receive<ClusterStopping>(_ =>
        {
            Timers.CancelAll();
            Sender.Tell(ClusterStopping.Instance);
            Become(Stopping);
        });
        Receive<RegisterWorker>(OnRegister);
        Receive<GetStatus>(s => Sender.Tell(_state.Status(s.RequestId)));
        Receive<Terminated>(t =>
        {
            var workers = _refs.Where(kv => kv.Value.Equals(t.ActorRef)).Select(kv => kv.Key).ToList();
            if (workers.Count > 0) Lost(workers, t.ActorRef.Path.Address);
            else CallerGone(t.ActorRef);
        });
        Receive<ClusterEvent.MemberLeft>(m => _leaving.Add(m.Member.Address));
        Receive<ClusterEvent.UnreachableMember>(u =>
        {
            // Recovery starts on unreachability, not on removal (which waits for the downing decision).
            _unreachable.Add(u.Member.Address);
            var lost = _state.Workers.Where(w => AddressOf(w.Path) == u.Member.Address).Select(w => w.Path).ToList();
            if (lost.Count > 0) _log.Warning("node {0} is unreachable: its workers are lost", u.Member.Address);
            Lost(lost, u.Member.Address);
        });
        Receive<ClusterEvent.ReachableMember>(r => _unreachable.Remove(r.Member.Address)); // its workers register again
        Receive<ClusterEvent.MemberRemoved>(r => _unreachable.Remove(r.Member.Address));
        Receive<ClusterEvent.IMemberEvent>(_ => { });
        Receive<ClusterEvent.CurrentClusterState>(_ => { });
        Receive<UnloadModel>(u =>
        {
            if (_state.Pending is { } pending) FailLoad(pending.Epoch, "the load was cancelled by an unload");
            else if (_load is { } planning) planning.ReplyTo.Tell(new LoadFailed(planning.Request.RequestId, "the load was cancelled by an unload"));
            _load = null;
            Unload(null);
            Sender.Tell(new ModelUnloaded(u.RequestId));
            Become(Idle);
        });
        Receive<SweepRequests>(_ =>
        {
            // A request whose stages went silent without dying is failed by its caller's stall timeout; free its slot too.
            foreach (var id in _state.Stale(DateTime.UtcNow, _settings.RequestTimeout * 10)) Finished(id);
        });
        Receive<GenerationDone>(d => Finished(d.RequestId));
        Receive<RequestFailed>(f => Finished(f.RequestId));
        Receive<ModelUnloaded>(_ => { });
        // Facts of a load or plan that is no longer in progress (unloaded, failed, superseded): dropped.
        Receive<Planned>(_ => { });
        Receive<PlanFailed>(_ => { });
        Receive<Replanned>(_ => { });
        Receive<ReplanFailed>(_ => { });
        Receive<SliceLoaded>(_ => { });
        Receive<SliceFailed>(_ => { });
        Receive<SliceProgress>(_ => { });
        Receive<LoadTimeout>(_ => { });
        Receive<StartWindowOver>(_ => { });
    }

    /// <summary>
    /// The whole cluster is shutting down (<see cref="ClusterStopping"/>): members leaving or lost start no recovery;
    /// only status is answered.
    /// </summary>
    private void Stopping()
    {
        Receive<GetStatus>(s => Sender.Tell(_state.Status(s.RequestId)));
        Receive<IClientRequest>(r => Sender.Tell(new RequestFailed(r.RequestId, "coordinator", "the cluster is shutting down")));
        ReceiveAny(_ => { });
    }

    /// <summary>
    /// A new coordinator (first start, or the singleton moved here): for <c>start-window</c> it only listens to the
    /// workers' registrations — which report the slice each holds — then adopts the newest model they hold.
    /// </summary>
    private void Starting()
    {
        Receive<StartWindowOver>(_ => AdoptHeld());
        Receive<LoadModel>(_ => Stash.Stash());
        Receive<IClientRequest>(r => Sender.Tell(new RequestFailed(r.RequestId, "coordinator", "the coordinator is starting; retry shortly", Retryable: true)));
        Always();
    }

    /// <summary>Every worker node that is up and reachable has registered (so what the cluster holds is known).</summary>
    private bool EveryWorkerNodeReported()
    {
        var cluster = Cluster.Get(Context.System);
        var workerNodes = cluster.State.Members.Where(m => m.Status == MemberStatus.Up && m.HasRole("worker") && !cluster.State.Unreachable.Contains(m)).ToList();
        return workerNodes.Count > 0 && workerNodes.All(m => _reported.Contains(m.Address)); // no membership seen yet: the window decides

    }

    private void AdoptHeld()
    {
        _reported.Clear();
        var records = _held.Values.Where(h => h.Record is not null).Select(h => h.Record!).ToList();
        var newest = records.OrderByDescending(r => r.PlanEpoch).FirstOrDefault();
        int highest = _held.Values.Select(h => h.PlanEpoch).Concat(records.Select(r => r.PlanEpoch)).DefaultIfEmpty(0).Max();
        var holders = newest is null ? new HashSet<string>() : _held.Where(kv => kv.Value.PlanEpoch == newest.PlanEpoch).Select(kv => kv.Key).ToHashSet(StringComparer.Ordinal);
        var missing = _state.Adopt(newest, holders, highest);
        foreach (var (path, held) in _held)
            if (held.PlanEpoch != newest?.PlanEpoch && _refs.TryGetValue(path, out var stale))
                stale.Tell(new ReleaseSlice(held.PlanEpoch)); // a slice of a model no longer served (a load the old coordinator never finished)
        _held.Clear();
        Stash.UnstashAll();
        if (newest is null)
        {
            Become(Idle);
            return;
        }
        _log.Info("adopted model {0} (epoch {1}) from the workers{2}", newest.Folder, newest.PlanEpoch,
            missing.Count > 0 ? $"; {missing.Count} stage(s) missing: recovering" : "");
        if (missing.Count > 0) StartRecovery($"stage(s) {string.Join(", ", missing.Select(Describe))} did not report after the coordinator moved");
        else
        {
            Commit(_state.Loaded!);
            Become(Ready);
        }
    }

    private void Idle()
    {
        Receive<LoadModel>(StartPlanning);
        Receive<IClientRequest>(r => Sender.Tell(new RequestFailed(r.RequestId, "coordinator",
            $"no model is loaded (state: {_state.StateName}{(_state.Failure is { } f ? $": {f}" : "")})")));
        Always();
    }

    private void Planning()
    {
        Receive<Planned>(OnPlanned);
        Receive<PlanFailed>(f =>
        {
            _state.Unload(f.Reason);
            _load = null;
            f.ReplyTo.Tell(new LoadFailed(f.Request.RequestId, f.Reason));
            Become(Idle);
        });
        Busy();
    }

    private void Loading()
    {
        Receive<SliceLoaded>(OnSliceLoaded);
        Receive<SliceFailed>(f => FailLoad(f.PlanEpoch, f.Reason));
        Receive<LoadTimeout>(t => FailLoad(t.Epoch, $"load did not finish within {_settings.LoadTimeout.TotalSeconds:0} s " +
            $"(waiting for {string.Join(", ", _state.Pending?.Waiting.Keys.Select(Describe) ?? Array.Empty<string>())})"));
        Receive<SliceProgress>(p =>
        {
            // Progress goes to whoever asked for it; the load request itself is answered once, at the end.
            if (_state.Pending is { } pending && p.PlanEpoch == pending.Epoch && _load?.Request.ProgressTo is { } to)
                Resolve(to).Tell(p with { WorkerPath = Describe(p.WorkerPath) });
        });
        Busy();
    }

    /// <summary>Planning, loading or recovering: another load waits its turn; requests wait for the model.</summary>
    private void Busy()
    {
        Receive<LoadModel>(r => Sender.Tell(new LoadFailed(r.RequestId, _state.Recovering
            ? $"the cluster is recovering {_state.Loaded?.Model}; unload it first or retry when it is ready"
            : $"a load of {_load?.Request.Model} is in progress")));
        Receive<IClientRequest>(r => Admit(r, Sender));
        Always();
    }

    private void Ready()
    {
        Receive<LoadModel>(StartPlanning);
        Receive<IClientRequest>(r => Admit(r, Sender));
        Always();
    }

    /// <summary>Lost modules are being re-planned (the files are read off the actor's thread).</summary>
    private void Replanning()
    {
        Receive<Replanned>(OnReplanned);
        Receive<ReplanFailed>(f => Degrade(f.Epoch, f.Reason));
        Busy();
    }

    /// <summary>The survivors lack the memory: requests are refused (retryably) until a node with room joins.</summary>
    private void Degraded()
    {
        Receive<LoadModel>(StartPlanning); // a new load replaces the degraded model
        Receive<IClientRequest>(r => Admit(r, Sender));
        Always();
    }

    private void OnRegister(RegisterWorker r)
    {
        var from = SenderRules.NodeOf(Context.System, Sender);
        if (_unreachable.Contains(from)) return; // lost until the failure detector says otherwise
        if (SenderRules.RegistrationProblem(Context.System, Sender, r.Devices.Select(d => d.ActorPath)) is { } intake)
        {
            _log.Warning("refused a registration as {0}: {1}", r.NodeName, intake);
            Sender.Tell(new WorkerRefused(r.NodeName, $"registration refused: {intake}", Transient: true));
            return;
        }
        if (_state.Starting) _reported.Add(from);
        var outcome = _state.Register(r);
        switch (outcome)
        {
            case Registration.Refused refused:
                _log.Error("refusing node {0} ({1}): {2}", r.NodeName, Sender.Path.Address, refused.Reason);
                Sender.Tell(new WorkerRefused(r.NodeName, refused.Reason));
                return;
            case Registration.Accepted accepted:
                foreach (var d in accepted.RefusedDevices) _log.Error("refusing device {0}: {1}", d.Device, d.Reason);
                foreach (var w in accepted.Joined)
                {
                    _refs[w.Path] = Sender;
                    Context.Watch(Sender);
                    _log.Info("worker {0} joined with {1}", w, ByteSize.Format(w.Budget));
                }
                Sender.Tell(accepted.RefusedDevices.Count > 0 && accepted.Joined.Count == 0 && r.Devices.All(d => _state.Worker(d.ActorPath) is null)
                    ? new WorkerRefused(r.NodeName, string.Join("; ", accepted.RefusedDevices.Select(d => $"{d.Device}: {d.Reason}")))
                    : new WorkerRegistered(r.NodeName));
                break;
        }
        if (r.Holding is { } held && r.Devices.Length == 1 && _state.Worker(r.Devices[0].ActorPath) is not null)
            Holding(r.Devices[0].ActorPath, held);
        if (_state.Starting && EveryWorkerNodeReported())
        {
            Timers.Cancel("start-window");
            AdoptHeld();
            return;
        }
        // Capacity joined while degraded: try the recovery again.
        if (outcome is Registration.Accepted { Joined.Count: > 0 } && _state.Degraded is not null && _state.Pending is null) StartRecovery("capacity joined");
    }

    /// <summary>What a registered worker says it holds: collected while starting; a slice of no epoch in use is released.</summary>
    private void Holding(string path, HeldSlice held)
    {
        if (_state.Starting)
        {
            _held[path] = held;
            return;
        }
        bool inUse = held.PlanEpoch == _state.Loaded?.Epoch || held.PlanEpoch == _state.Pending?.Epoch;
        if (!inUse && held.PlanEpoch < _state.Epoch)
        {
            _log.Info("worker {0} holds a slice of epoch {1}, which is not served: released", Describe(path), held.PlanEpoch);
            _refs[path].Tell(new ReleaseSlice(held.PlanEpoch));
        }
    }

    private void StartPlanning(LoadModel request)
    {
        Unload(null);
        int epoch = _state.NextEpoch();
        var replyTo = Sender;
        _load = (request, replyTo, DateTime.UtcNow);
        var settings = _settings;
        // Reading config.json and the checkpoint's headers is file I/O: off the actor's thread.
        Task.Run(() => ModelDescription.Read(request, settings.HasLocal)).PipeTo(Self,
            success: m => new Planned(request, replyTo, epoch, m),
            failure: ex => new PlanFailed(request, replyTo, ex.GetBaseException().Message));
        Become(Planning);
    }

    private void OnPlanned(Planned p)
    {
        LoadPlan plan;
        try { plan = SlicePlanner.Plan(p.Model, p.Request, _state.Workers, p.Epoch); }
        catch (Exception ex) // a bad request must never restart the coordinator (it would forget every worker)
        {
            Self.Tell(new PlanFailed(p.Request, p.ReplyTo, ex.Message));
            return;
        }
        SendSlices(plan);
        _log.Info("loading {0} (epoch {1}) on {2} workers", p.Request.Model, p.Epoch, plan.Slices.Count);
        Become(Loading);
    }

    private void SendSlices(LoadPlan plan)
    {
        foreach (var (worker, slice) in plan.Slices) _refs[worker.Path].TellChunked(slice); // a big model's slice index may exceed one frame
        _state.BeginLoad(plan.Result.Model, plan.Result.Epoch, plan.Slices.ToDictionary(s => s.Worker.Path, s => s.Slice.PlannedBytes), plan.Result);
        Timers.StartSingleTimer("load-timeout", new LoadTimeout(plan.Result.Epoch), _settings.LoadTimeout);
    }

    private void OnSliceLoaded(SliceLoaded s)
    {
        // The worker is known by the actor that sent the fact, not by the path it names.
        string? path = _refs.FirstOrDefault(kv => kv.Value.Equals(Sender)).Key;
        bool recovery = _state.Recovering;
        if (path is null || _state.SliceLoaded(path, s) is not { } loaded) return;
        Timers.Cancel("load-timeout");
        Commit(loaded);
        if (recovery)
        {
            _log.Warning("model {0} recovered (epoch {1}) in {2:0.00} s: moved {3}", loaded.Model, loaded.Epoch, (DateTime.UtcNow - _recoveryStarted).TotalSeconds,
                loaded.Moved is { Length: > 0 } m ? string.Join(", ", m.Select(e => $"{e.Module} → {e.Device}")) : "nothing");
            // Workers that hold a slice of the old epoch and are not in the new plan free it.
            foreach (var r in _refs.Where(kv => loaded.Stages.All(st => st.WorkerPath != kv.Key)).Select(kv => kv.Value).Distinct())
                r.Tell(new ReleaseSlice(loaded.Epoch - 1)); // any older epoch's slice
            Become(Ready);
            foreach (var id in _state.Drain(DateTime.UtcNow))
                if (_waiting.Remove(id, out var w)) Start(w.Request, w.Caller);
            return;
        }
        if (_load is not { } load) return;
        double seconds = (DateTime.UtcNow - load.Started).TotalSeconds;
        _log.Info("model {0} ready (epoch {1}) in {2:0.00} s", loaded.Model, loaded.Epoch, seconds);
        load.ReplyTo.Tell(new ModelLoaded(load.Request.RequestId, loaded.Epoch, loaded.Usage, seconds, loaded.Stages, loaded.DeviceMap));
        _load = null;
        Become(Ready);
    }

    /// <summary>Every stage worker keeps the served model's record, so that a coordinator elsewhere can serve it again.</summary>
    private void Commit(LoadedModel model)
    {
        var commit = new ModelCommitted(model.ToRecord());
        foreach (var path in model.Stages.Select(s => s.WorkerPath).Distinct())
            if (_refs.TryGetValue(path, out var r)) r.TellChunked(commit);
    }

    private void FailLoad(int epoch, string reason)
    {
        bool recovery = _state.Recovering;
        if (!_state.FailLoad(epoch, reason)) return;
        Timers.Cancel("load-timeout");
        if (recovery)
        {
            // A recovery load that fails (a survivor lost too, a slice refused) is planned again from what is left.
            _log.Warning("recovery load (epoch {0}) failed: {1}", epoch, reason);
            StartRecovery(reason);
            return;
        }
        _log.Warning("load of {0} failed: {1}", _load?.Request.Model, reason);
        foreach (var r in _refs.Values.Distinct()) r.Tell(new ReleaseSlice(epoch)); // never a half-loaded model
        if (_load is { } load) load.ReplyTo.Tell(new LoadFailed(load.Request.RequestId, reason));
        _load = null;
        Become(Idle);
    }

    /// <summary>Workers lost (their node crashed, was cut off, paused past the failure detector, or left).</summary>
    private void Lost(IReadOnlyList<string> paths, Address address)
    {
        if (paths.Count == 0) return;
        bool graceful = _leaving.Contains(address);
        bool failsLoad = false, losesModel = false;
        var names = new List<string>();
        foreach (var path in paths)
        {
            string name = Describe(path);
            names.Add(name);
            var (f, l) = _state.Remove(path);
            failsLoad |= f;
            losesModel |= l;
            _refs.Remove(path);
            if (graceful) _log.Info("worker {0} left the cluster", name);
            else _log.Warning("worker {0} was lost", name);
        }
        string what = $"node {names[0].Split('/')[0]} ({string.Join(", ", names)}) was lost";
        if (_state.Starting) return; // adoption counts the stages that reported
        if (failsLoad && _state.Pending is { } pending) FailLoad(pending.Epoch, $"{what} during the load");
        else if (losesModel && _state.Loaded is not null && _state.Pending is null) StartRecovery(what);
    }

    /// <summary>
    /// The served model lost stages: re-plan the lost modules onto the survivors under a new epoch (only what moved
    /// is loaded), or mark it degraded when they lack the memory.
    /// </summary>
    private void StartRecovery(string why)
    {
        var served = _state.Loaded!;
        if (!_state.Recovering) _recoveryStarted = DateTime.UtcNow;
        _state.BeginRecovery();
        // Callers of requests in flight learn now (not when their own watch of the stages fires) and resume once ready.
        foreach (var (id, caller) in _running)
            caller.Tell(new RequestFailed(id, "coordinator", $"{why}; the model is being recovered", Retryable: true));
        _running.Clear();
        int epoch = _state.NextEpoch();
        _log.Warning("recovering {0} (epoch {1} → {2}): {3}", served.Model, served.Epoch, epoch, why);
        var request = served.Request;
        if (request is null)
        {
            Degrade(epoch, $"{why}; no load request is known for {served.Model}: load it again");
            return;
        }
        var settings = _settings;
        Task.Run(() => ModelDescription.Read(request, settings.HasLocal)).PipeTo(Self,
            success: m => new Replanned(epoch, m),
            failure: ex => new ReplanFailed(epoch, ex.GetBaseException().Message));
        Become(Replanning);
    }

    private void OnReplanned(Replanned r)
    {
        if (r.Epoch != _state.Epoch) return; // superseded by a later loss
        LoadPlan plan;
        try { plan = SlicePlanner.Replan(r.Model, _state.Loaded!, _state.Workers, _state.Holders, r.Epoch).Plan; }
        catch (Exception ex)
        {
            Degrade(r.Epoch, ex.Message);
            return;
        }
        SendSlices(plan);
        _log.Info("recovery plan (epoch {0}): {1}", r.Epoch, plan.Result.Moved is { Length: > 0 } m ? string.Join(", ", m.Select(e => $"{e.Module} → {e.Device}")) : "nothing moves");
        Become(Loading);
    }

    private void Degrade(int epoch, string reason)
    {
        if (epoch != _state.Epoch) return;
        string detail = $"degraded: {reason} (plan epoch {epoch}); the model recovers by itself when a node with enough memory joins";
        _log.Error("model {0} {1}", _state.Loaded?.Model, detail);
        _state.MarkDegraded(detail);
        Become(Degraded);
    }

    private void Unload(string? failure)
    {
        if (_state.Loaded is { } model)
            foreach (var r in _refs.Values.Distinct()) r.Tell(new ReleaseSlice(model.Epoch));
        foreach (var id in _state.Unload(failure))
            if (_waiting.Remove(id, out var w)) w.Caller.Tell(new RequestFailed(id, "coordinator", "the model was unloaded before this request started"));
        _running.Clear();
        _waiting.Clear(); // requests in flight fail by themselves: their callers watch the stages
    }

    private void Admit(IClientRequest request, IActorRef caller)
    {
        switch (_state.Admit(request.RequestId, DateTime.UtcNow))
        {
            case Admission.Start: Start(request, caller); break;
            case Admission.Queue:
                _waiting[request.RequestId] = (request, caller);
                Context.Watch(caller); // a caller that goes away while queued withdraws its request
                break;
            case Admission.Busy:
                caller.Tell(new RequestFailed(request.RequestId, "coordinator", $"busy: {_state.InFlight} requests in flight and {_state.Queued} queued; retry later"));
                break;
            case Admission.Recovering:
                caller.Tell(new RequestFailed(request.RequestId, "coordinator", $"the model is {_state.StateName}: {_state.Degraded ?? "lost stages are being re-planned"}", Retryable: true));
                break;
            default:
                caller.Tell(new RequestFailed(request.RequestId, "coordinator", $"no model is loaded (state: {_state.StateName})"));
                break;
        }
    }

    /// <summary>
    /// A caller went away (its client exited, crashed or gave up): its requests are cancelled on every stage — the
    /// stages drop their caches and any later step of them — and their slots freed.
    /// </summary>
    private void CallerGone(IActorRef caller)
    {
        var ids = _running.Where(kv => kv.Value.Equals(caller)).Select(kv => kv.Key).ToList();
        foreach (var id in ids)
        {
            if (_state.Loaded is { } model)
                foreach (var stage in model.Route.Select(h => h.WorkerPath).Distinct()) Resolve(stage).Tell(new ReleaseRequest(id));
            _log.Info("request {0} cancelled: its caller is gone", id);
            Finished(id);
        }
        foreach (var id in _waiting.Where(kv => kv.Value.Caller.Equals(caller)).Select(kv => kv.Key).ToList())
        {
            _waiting.Remove(id);
            _state.Withdraw(id); // a queued request never started: it only leaves the queue
            _log.Info("queued request {0} withdrawn: its caller is gone", id);
        }
    }

    private void Finished(string requestId)
    {
        if (_running.Remove(requestId, out var caller) && !_running.ContainsValue(caller) && !_waiting.Values.Any(w => w.Caller.Equals(caller)))
            Context.Unwatch(caller);
        foreach (var next in _state.Finish(requestId, DateTime.UtcNow))
            if (_waiting.Remove(next, out var w)) Start(w.Request, w.Caller);
    }

    private void Start(IClientRequest request, IActorRef caller)
    {
        var model = _state.Loaded!;
        var (step, error) = FirstStep.Build(request, model, Akka.Serialization.Serialization.SerializedActorPath(caller),
            Akka.Serialization.Serialization.SerializedActorPath(Self), (int)Math.Min(int.MaxValue, Math.Max(_settings.MaxNewTokens, model.MaxPositions)));
        if (step is null)
        {
            caller.Tell(new RequestFailed(request.RequestId, "coordinator", error!));
            Finished(request.RequestId);
            return;
        }
        _running[request.RequestId] = caller;
        Context.Watch(caller); // a caller that goes away cancels its requests
        Resolve(model.Route[0].WorkerPath).TellChunked(step, Self); // from the coordinator: stages take steps only from members
    }

    private IActorRef Resolve(string path) => ((ExtendedActorSystem)Context.System).Provider.ResolveActorRef(path);

    private static Address? AddressOf(string path) => ActorPath.TryParse(path, out var p) ? p.Address : null;

    private string Describe(string workerPath) => _state.Worker(workerPath)?.ToString()
        ?? _state.Loaded?.Stages.FirstOrDefault(s => s.WorkerPath == workerPath)?.Device ?? workerPath;
}
