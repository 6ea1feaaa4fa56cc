using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// The cluster singleton, a thin shell over <see cref="CoordinatorState"/>: registers device workers, plans a
/// model over them (<see cref="SlicePlanner"/>; the files are read off its thread), hands out slices and tracks
/// the load to ready or failed (a worker lost or silent fails it as a whole, naming the node), and admits
/// requests to the pipeline's first hop. States: <see cref="Idle"/> (no model, or the last load failed),
/// <see cref="Planning"/>, <see cref="Loading"/>, <see cref="Ready"/>.
/// </summary>
public sealed class CoordinatorActor : ReceiveActor, IWithTimers
{
    public ITimerScheduler Timers { get; set; } = null!;

    private sealed record Planned(LoadModel Request, IActorRef ReplyTo, int Epoch, ModelDescription Model);
    private sealed record PlanFailed(LoadModel Request, IActorRef ReplyTo, string Reason);
    private sealed record LoadTimeout(int Epoch);
    private sealed record SweepRequests;

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly NodeSettings _settings;
    private readonly CoordinatorState _state;
    private readonly Dictionary<string, IActorRef> _refs = new(StringComparer.Ordinal); // worker path → its actor
    private readonly Dictionary<string, (IClientRequest Request, IActorRef Caller)> _waiting = new(StringComparer.Ordinal); // queued
    private readonly HashSet<Address> _leaving = new(); // nodes that announced a graceful leave
    private (LoadModel Request, IActorRef ReplyTo, DateTime Started)? _load;

    public CoordinatorActor(NodeSettings settings)
    {
        _settings = settings;
        _state = new CoordinatorState(Protocol.Version, settings.MaxFrameSize, settings.MaxInFlight, settings.MaxQueued);
        Idle();
    }

    public static Props Props(NodeSettings settings) => Akka.Actor.Props.Create(() => new CoordinatorActor(settings));

    protected override void PreStart()
    {
        Timers.StartPeriodicTimer("sweep", new SweepRequests(), TimeSpan.FromSeconds(10));
        Cluster.Get(Context.System).Subscribe(Self, typeof(ClusterEvent.MemberLeft));
    }

    protected override void PostStop() => Cluster.Get(Context.System).Unsubscribe(Self);

    /// <summary>What every state answers: registrations, status, departures, unload.</summary>
    private void Always()
    {
        Receive<RegisterWorker>(OnRegister);
        Receive<GetStatus>(s => Sender.Tell(_state.Status(s.RequestId)));
        Receive<Terminated>(OnTerminated);
        Receive<ClusterEvent.MemberLeft>(m => _leaving.Add(m.Member.Address));
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
        // Facts of a load that is no longer in progress (unloaded, failed, superseded): dropped.
        Receive<Planned>(_ => { });
        Receive<PlanFailed>(_ => { });
        Receive<SliceLoaded>(_ => { });
        Receive<SliceFailed>(_ => { });
        Receive<SliceProgress>(_ => { });
        Receive<LoadTimeout>(_ => { });
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

    /// <summary>Planning or loading: another load waits its turn; requests have no model yet.</summary>
    private void Busy()
    {
        Receive<LoadModel>(r => Sender.Tell(new LoadFailed(r.RequestId, $"a load of {_load?.Request.Model} is in progress")));
        Receive<IClientRequest>(r => Sender.Tell(new RequestFailed(r.RequestId, "coordinator", "no model is loaded (state: loading)")));
        Always();
    }

    private void Ready()
    {
        Receive<LoadModel>(StartPlanning);
        Receive<IClientRequest>(r => Admit(r, Sender));
        Always();
    }

    private void OnRegister(RegisterWorker r)
    {
        switch (_state.Register(r))
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
                Sender.Tell(accepted.RefusedDevices.Count > 0 && accepted.Joined.Count == 0
                    ? new WorkerRefused(r.NodeName, string.Join("; ", accepted.RefusedDevices.Select(d => $"{d.Device}: {d.Reason}")))
                    : new WorkerRegistered(r.NodeName));
                return;
        }
    }

    private void StartPlanning(LoadModel request)
    {
        Unload(null);
        int epoch = _state.NextEpoch();
        var replyTo = Sender;
        var workers = _state.Workers.ToList();
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
        foreach (var (worker, slice) in plan.Slices) _refs[worker.Path].TellChunked(slice); // a big model's slice index may exceed one frame
        _state.BeginLoad(p.Model.Folder, p.Epoch, plan.Slices.ToDictionary(s => s.Worker.Path, s => s.Slice.PlannedBytes), plan.Result);
        Timers.StartSingleTimer("load-timeout", new LoadTimeout(p.Epoch), _settings.LoadTimeout);
        _log.Info("loading {0} (epoch {1}) on {2} workers", p.Request.Model, p.Epoch, plan.Slices.Count);
        Become(Loading);
    }

    private void OnSliceLoaded(SliceLoaded s)
    {
        // The worker is known by the actor that sent the fact, not by the path it names.
        string? path = _refs.FirstOrDefault(kv => kv.Value.Equals(Sender)).Key;
        if (path is null || _state.SliceLoaded(path, s) is not { } loaded || _load is not { } load) return;
        Timers.Cancel("load-timeout");
        double seconds = (DateTime.UtcNow - load.Started).TotalSeconds;
        _log.Info("model {0} ready (epoch {1}) in {2:0.00} s", loaded.Model, loaded.Epoch, seconds);
        load.ReplyTo.Tell(new ModelLoaded(load.Request.RequestId, loaded.Epoch, loaded.Usage, seconds, loaded.Stages, loaded.DeviceMap));
        _load = null;
        Become(Ready);
    }

    private void FailLoad(int epoch, string reason)
    {
        if (!_state.FailLoad(epoch, reason)) return;
        Timers.Cancel("load-timeout");
        _log.Warning("load of {0} failed: {1}", _load?.Request.Model, reason);
        foreach (var r in _refs.Values.Distinct()) r.Tell(new ReleaseSlice(epoch)); // never a half-loaded model
        if (_load is { } load) load.ReplyTo.Tell(new LoadFailed(load.Request.RequestId, reason));
        _load = null;
        Become(Idle);
    }

    private void OnTerminated(Terminated t)
    {
        var lost = _refs.Where(kv => kv.Value.Equals(t.ActorRef)).Select(kv => kv.Key).ToList();
        if (lost.Count == 0) return;
        bool graceful = _leaving.Contains(t.ActorRef.Path.Address);
        foreach (var path in lost)
        {
            string name = Describe(path);
            var (failsLoad, losesModel) = _state.Remove(path);
            _refs.Remove(path);
            if (graceful) _log.Info("worker {0} left the cluster", name);
            else _log.Warning("worker {0} was lost", name);
            if (failsLoad && _state.Pending is { } pending) FailLoad(pending.Epoch, $"node {name.Split('/')[0]} ({name}) was lost during the load");
            if (losesModel && _state.Loaded is { } model)
            {
                if (graceful) _log.Info("model {0} is unloaded: {1} left; load it again", model.Model, name);
                else _log.Warning("model {0} is no longer complete: {1} was lost; load it again", model.Model, name);
                Unload($"node {name.Split('/')[0]} lost ({name}); load the model again");
                Become(Idle);
            }
        }
    }

    private void Unload(string? failure)
    {
        if (_state.Loaded is { } model)
            foreach (var r in _refs.Values.Distinct()) r.Tell(new ReleaseSlice(model.Epoch));
        foreach (var id in _state.Unload(failure))
            if (_waiting.Remove(id, out var w)) w.Caller.Tell(new RequestFailed(id, "coordinator", "the model was unloaded before this request started"));
        _waiting.Clear(); // requests in flight fail by themselves: their callers watch the stages
    }

    private void Admit(IClientRequest request, IActorRef caller)
    {
        switch (_state.Admit(request.RequestId, DateTime.UtcNow))
        {
            case Admission.Start: Start(request, caller); break;
            case Admission.Queue: _waiting[request.RequestId] = (request, caller); break;
            case Admission.Busy:
                caller.Tell(new RequestFailed(request.RequestId, "coordinator", $"busy: {_state.InFlight} requests in flight and {_state.Queued} queued; retry later"));
                break;
            default:
                caller.Tell(new RequestFailed(request.RequestId, "coordinator", $"no model is loaded (state: {_state.StateName})"));
                break;
        }
    }

    private void Finished(string requestId)
    {
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
        Resolve(_state.Loaded!.Route[0].WorkerPath).TellChunked(step, caller);
    }

    private IActorRef Resolve(string path) => ((ExtendedActorSystem)Context.System).Provider.ResolveActorRef(path);

    private string Describe(string workerPath) => _state.Worker(workerPath)?.ToString() ?? workerPath;
}
