using System.Diagnostics;
using System.Text.Json.Nodes;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Transport;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;
using ShardPipe.Actors.Settings;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// The cluster singleton: keeps the registry of device workers, plans a model over them, assigns each its slice,
/// tracks the load to Ready or Failed (a worker lost or silent fails the load as a whole, naming its node), and
/// starts requests at the pipeline's first hop. Plans carry an epoch; slice loads are idempotent per epoch.
/// </summary>
public sealed class CoordinatorActor : ReceiveActor, IWithTimers
{
    public ITimerScheduler Timers { get; set; } = null!;

    private sealed record Worker(IActorRef Ref, string Node, string Device, long Budget, string Path, bool HasLocal)
    {
        public DeviceId Id => DeviceId.Parse($"{Node}/{Device}");
    }

    private sealed record Loaded(string Model, int Epoch, PipelineHop[] Route, List<KeyValuePair<string, DeviceId>> Map,
        DeviceUsage[] Usage, StageInfo[] Stages, JsonObject GenerationConfig, long Vocab);

    private sealed record PendingLoad(LoadModel Request, IActorRef ReplyTo, int Epoch, Dictionary<IActorRef, long> Waiting,
        Dictionary<IActorRef, SliceLoaded> Done, Loaded Result, Stopwatch Clock);

    private sealed record LoadTimeout(int Epoch);
    private sealed record SweepRequests;

    private readonly Dictionary<string, (IActorRef Caller, DateTime Started)> _inFlight = new();
    private readonly Queue<(Generate Request, IActorRef Caller)> _queued = new();

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly NodeSettings _settings;
    private readonly List<Worker> _workers = new();
    /// <summary>Nodes that announced a graceful leave: their workers' departure is routine, not a failure.</summary>
    private readonly HashSet<Address> _leaving = new();
    private Loaded? _loaded;
    private PendingLoad? _pending;
    private int _epoch;
    private string _state = "empty";

    public CoordinatorActor(NodeSettings settings)
    {
        _settings = settings;
        Receive<RegisterWorker>(OnRegister);
        Receive<LoadModel>(OnLoad);
        Receive<SliceLoaded>(OnSliceLoaded);
        Receive<SliceFailed>(f => FailLoad(f.PlanEpoch, f.Reason));
        Receive<SliceProgress>(p =>
        {
            // Progress goes to whoever asked for it; the load request itself is answered once, at the end.
            if (_pending is { } pending && p.PlanEpoch == pending.Epoch && pending.Request.ProgressTo is { } to)
                ((ExtendedActorSystem)Context.System).Provider.ResolveActorRef(to).Tell(p with { WorkerPath = _workers.FirstOrDefault(w => w.Path == p.WorkerPath) is { } w ? $"{w.Node}/{w.Device}" : p.WorkerPath });
        });
        Receive<LoadTimeout>(t => FailLoad(t.Epoch, $"load did not finish within {_settings.LoadTimeout.TotalSeconds:0} s (waiting for {string.Join(", ", _pending?.Waiting.Keys.Select(Describe) ?? Array.Empty<string>())})"));
        Receive<Terminated>(OnTerminated);
        Receive<ClusterEvent.MemberLeft>(m => _leaving.Add(m.Member.Address));
        Receive<ClusterEvent.CurrentClusterState>(_ => { });
        Receive<GetStatus>(s => Sender.Tell(BuildStatus(s.RequestId)));
        Receive<UnloadModel>(u =>
        {
            Unload();
            Sender.Tell(new ModelUnloaded(u.RequestId));
        });
        Receive<Generate>(OnGenerate);
        Receive<GenerationDone>(d => Finished(d.RequestId));
        Receive<RequestFailed>(f => Finished(f.RequestId));
        Receive<SweepRequests>(_ =>
        {
            // A request whose stages went silent without dying is failed by its caller's stall timeout; free its slot too.
            foreach (var id in _inFlight.Where(kv => DateTime.UtcNow - kv.Value.Started > _settings.RequestTimeout * 10).Select(kv => kv.Key).ToList())
                Finished(id);
        });
        Receive<ModelUnloaded>(_ => { });
    }

    protected override void PreStart()
    {
        Timers.StartPeriodicTimer("sweep", new SweepRequests(), TimeSpan.FromSeconds(10));
        Cluster.Get(Context.System).Subscribe(Self, typeof(ClusterEvent.MemberLeft));
    }

    protected override void PostStop() => Cluster.Get(Context.System).Unsubscribe(Self);

    private void Finished(string requestId)
    {
        if (!_inFlight.Remove(requestId)) return;
        while (_inFlight.Count < _settings.MaxInFlight && _queued.Count > 0)
        {
            var (request, caller) = _queued.Dequeue();
            Start(request, caller);
        }
    }

    public static Props Props(NodeSettings settings) => Akka.Actor.Props.Create(() => new CoordinatorActor(settings));

    private string Describe(IActorRef r) => _workers.FirstOrDefault(w => w.Ref.Equals(r)) is { } w ? $"{w.Node}/{w.Device}" : r.Path.ToString();

    private void OnRegister(RegisterWorker r)
    {
        if (r.ProtocolVersion != Protocol.Version || r.MaxFrameSize != _settings.MaxFrameSize)
        {
            string reason = r.ProtocolVersion != Protocol.Version
                ? $"protocol version {r.ProtocolVersion}, the cluster speaks {Protocol.Version}"
                : $"maximum-frame-size {r.MaxFrameSize} bytes, the cluster uses {_settings.MaxFrameSize}";
            _log.Error("refusing node {0} ({1}): {2}", r.NodeName, Sender.Path.Address, reason);
            Sender.Tell(new WorkerRefused(r.NodeName, reason));
            return;
        }
        foreach (var d in r.Devices)
        {
            if (_workers.Any(w => w.Ref.Equals(Sender))) continue;
            _workers.Add(new Worker(Sender, r.NodeName, d.Device, d.BudgetBytes, d.ActorPath, r.LocalModelRoots.Length > 0));
            Context.Watch(Sender);
            _log.Info("worker {0}/{1} joined with {2}", r.NodeName, d.Device, ByteSize.Format(d.BudgetBytes));
        }
        Sender.Tell(new WorkerRegistered(r.NodeName));
    }

    private void OnLoad(LoadModel request)
    {
        if (_pending is not null)
        {
            Sender.Tell(new LoadFailed(request.RequestId, $"a load of {_pending.Request.Model} is in progress"));
            return;
        }
        if (_workers.Count == 0)
        {
            Sender.Tell(new LoadFailed(request.RequestId, "no device workers have joined the cluster"));
            return;
        }
        try
        {
            Unload();
            int epoch = ++_epoch;
            var (loaded, slices) = Plan(request, epoch);
            var waiting = new Dictionary<IActorRef, long>();
            foreach (var (worker, slice) in slices)
            {
                worker.Ref.TellChunked(slice); // a big model's slice index may exceed one frame
                waiting[worker.Ref] = slice.PlannedBytes;
            }
            _pending = new PendingLoad(request, Sender, epoch, waiting, new Dictionary<IActorRef, SliceLoaded>(), loaded, Stopwatch.StartNew());
            _state = "loading";
            Timers.StartSingleTimer("load-timeout", new LoadTimeout(epoch), _settings.LoadTimeout);
            _log.Info("loading {0} (epoch {1}) on {2} workers", request.Model, epoch, waiting.Count);
        }
        catch (Exception ex) when (ex is ShardPipeException or ArgumentException or NotSupportedException or FormatException or IOException)
        {
            _state = "failed";
            Sender.Tell(new LoadFailed(request.RequestId, ex.Message));
        }
    }

    /// <summary>Plans the model over the registered workers and builds each worker's slice.</summary>
    private (Loaded, List<(Worker, LoadSlice)>) Plan(LoadModel request, int epoch)
    {
        string folder = ModelLocator.Locate(request.Model);
        var config = PretrainedConfig.FromFolder(folder);
        var meta = AutoModel.FromConfig(config);
        using var ckpt = Checkpoint.Open(folder, request.Variant);
        var dtype = PreTrainedModel.ResolveDType(request.DType, config, ckpt.Tensors.Select(t => t.Info.DType));
        // Pipeline order: nodes by name (node-2 before node-10), so that a plan does not depend on who registered first.
        var budgets = _workers.OrderBy(w => w.Node, NaturalOrder.Instance).Select(w => (w.Id, (double)w.Budget)).ToList();
        if (request.MaxMemory is { } mm)
            foreach (var (device, bytes) in MaxMemory.Parse(mm))
            {
                int i = budgets.FindIndex(b => b.Id == device);
                if (i < 0) throw new PlacementException($"max_memory names {device}, which is not a device of this cluster ({string.Join(", ", budgets.Select(b => b.Id))})");
                budgets[i] = (device, bytes);
            }
        var tree = meta.ToPlacementTree();
        var noSplit = request.NoSplitModuleClasses ?? meta.NoSplitModules.ToArray();
        List<KeyValuePair<string, DeviceId>> map;
        List<(DeviceId Device, double Bytes, double? Budget)> usage;
        string strategy = request.DeviceMap.Trim();
        if (strategy.StartsWith('{') || !(strategy is "balanced" or "auto" or "sequential"))
        {
            map = strategy.StartsWith('{') ? DevicePlanner.ParseExplicit(strategy) : new() { new("", DeviceId.Parse(strategy)) };
            if (strategy.StartsWith('{')) DevicePlanner.ValidateExplicit(tree, map);
            foreach (var d in map.Select(kv => kv.Value).Distinct())
                if (!budgets.Any(b => b.Id == d)) throw new PlacementException($"device_map names {d}, which is not a device of this cluster");
            usage = DevicePlanner.Usage(tree, map, budgets, dtype, memoryBytes: true);
            foreach (var u in usage)
                if (u.Budget is { } b && u.Bytes > b)
                    throw new PlacementException($"{u.Device} would hold {ByteSize.Format((long)u.Bytes)} but its budget is {ByteSize.Format((long)b)}: {ByteSize.Format((long)(u.Bytes - b))} missing");
        }
        else
        {
            var plan = ClusterPlanner.Plan(new ClusterPlanRequest
            {
                Model = tree, Devices = budgets, Strategy = strategy, NoSplitModuleClasses = noSplit, DType = dtype,
                Layers = Enumerable.Range(0, meta.NumLayers).Select(meta.LayerPath).ToList(),
            });
            map = plan.DeviceMap;
            usage = plan.Devices;
        }
        string WorkerPath(DeviceId d) => _workers.First(w => w.Id == d).Path;
        var route = PipelineRoute.Build(meta, map, WorkerPath);
        var reader = _workers.FirstOrDefault(w => w.HasLocal && _settings.HasLocal(folder));
        // The reader lives beside a worker with local shards: same node address, path /user/shard-reader.
        string? readerPath = reader is null ? null : reader.Path[..reader.Path.IndexOf("/user/", StringComparison.Ordinal)] + "/user/shard-reader";
        var slices = new List<(Worker, LoadSlice)>();
        string configJson = config.Values.ToJsonString();
        foreach (var worker in _workers)
        {
            var prefixes = map.Where(kv => kv.Value == worker.Id).Select(kv => kv.Key).ToArray();
            if (prefixes.Length == 0) continue;
            bool Include(string key) => prefixes.Any(p => p.Length == 0 || key == p || key.StartsWith(p + ".", StringComparison.Ordinal));
            // Tied weights: a head on this worker needs the embedding tensor the checkpoint stores.
            var tiedKeys = tree.TiedParameters().Where(g => g.Any(Include)).SelectMany(g => g).ToHashSet(StringComparer.Ordinal);
            var tensors = ckpt.Tensors.Where(t => Include(t.Name) || tiedKeys.Contains(t.Name))
                .Select(t => new SliceTensor(t.Name, DTypes.Code(t.Info.DType), t.Info.Shape)).ToArray();
            long planned = (long)usage.Where(u => u.Device == worker.Id).Sum(u => u.Bytes);
            slices.Add((worker, new LoadSlice(epoch, folder, request.Variant, DTypes.TorchName(dtype), configJson, prefixes, planned, readerPath, route, tensors)));
        }
        var deviceUsage = usage.Select(u => new DeviceUsage(u.Device.ToString(), (long)u.Bytes, 0, (long)(u.Budget ?? 0))).ToArray();
        var stages = route.Select(h => new StageInfo(_workers.First(w => w.Path == h.WorkerPath).Id.ToString(), h.WorkerPath)).ToArray();
        return (new Loaded(folder, epoch, route, map, deviceUsage, stages, PreTrainedModel.LoadGenerationConfig(folder, config), meta.VocabSize), slices);
    }

    private void OnSliceLoaded(SliceLoaded s)
    {
        if (_pending is null || s.PlanEpoch != _pending.Epoch) return;
        if (_pending.Waiting.Remove(Sender)) _pending.Done[Sender] = s;
        if (_pending.Waiting.Count > 0) return;
        Timers.Cancel("load-timeout");
        var p = _pending;
        _pending = null;
        var usage = p.Result.Usage.Select(u =>
        {
            var slices = p.Done.Where(d => _workers.First(w => w.Ref.Equals(d.Key)).Id.ToString() == u.Device).Select(d => d.Value).ToList();
            return u with { LoadedBytes = slices.Sum(x => x.Bytes), Streamed = slices.Any(x => x.Streamed) };
        }).ToArray();
        _loaded = p.Result with { Usage = usage };
        _state = "ready";
        _log.Info("model {0} ready (epoch {1}) in {2:0.00} s", p.Request.Model, p.Epoch, p.Clock.Elapsed.TotalSeconds);
        p.ReplyTo.Tell(new ModelLoaded(p.Request.RequestId, p.Epoch, _loaded.Map.Select(kv => kv.Key).ToArray(),
            _loaded.Map.Select(kv => kv.Value.ToString()).ToArray(), usage, p.Clock.Elapsed.TotalSeconds, _loaded.Stages));
    }

    private void FailLoad(int epoch, string reason)
    {
        if (_pending is null || _pending.Epoch != epoch) return;
        Timers.Cancel("load-timeout");
        var p = _pending;
        _pending = null;
        _state = "failed";
        _log.Warning("load of {0} failed: {1}", p.Request.Model, reason);
        foreach (var w in _workers) w.Ref.Tell(new ReleaseSlice(epoch)); // never a half-loaded model
        p.ReplyTo.Tell(new LoadFailed(p.Request.RequestId, reason));
    }

    private ClusterStatus BuildStatus(string requestId) => new(requestId, _state, _loaded?.Model,
        _workers.Select(w => w.Node).Distinct().ToArray(),
        _loaded?.Map.Select(kv => kv.Key).ToArray() ?? Array.Empty<string>(),
        _loaded?.Map.Select(kv => kv.Value.ToString()).ToArray() ?? Array.Empty<string>(),
        _loaded?.Usage ?? _workers.Select(w => new DeviceUsage(w.Id.ToString(), 0, 0, w.Budget)).ToArray(),
        _loaded?.Stages ?? Array.Empty<StageInfo>());

    private void OnTerminated(Terminated t)
    {
        var lost = _workers.Where(w => w.Ref.Equals(t.ActorRef)).ToList();
        if (lost.Count == 0) return;
        _workers.RemoveAll(w => w.Ref.Equals(t.ActorRef));
        string name = string.Join(", ", lost.Select(w => $"{w.Node}/{w.Device}"));
        bool graceful = _leaving.Contains(t.ActorRef.Path.Address);
        if (graceful) _log.Info("worker {0} left the cluster", name);
        else _log.Warning("worker {0} was lost", name);
        if (_pending is not null && (_pending.Waiting.ContainsKey(t.ActorRef) || _pending.Done.ContainsKey(t.ActorRef)))
            FailLoad(_pending.Epoch, $"node {lost[0].Node} ({name}) was lost during the load");
        if (_loaded is not null && _loaded.Stages.Any(s => lost.Any(l => l.Path == s.WorkerPath)))
        {
            if (graceful) _log.Info("model {0} is unloaded: {1} left; load it again", _loaded.Model, name);
            else _log.Warning("model {0} is no longer complete: {1} was lost; load it again", _loaded.Model, name);
            Unload();
            _state = $"failed: node {lost[0].Node} lost";
        }
    }

    private void Unload()
    {
        foreach (var (request, caller) in _queued) caller.Tell(new RequestFailed(request.RequestId, "coordinator", "the model was unloaded before this request started"));
        _queued.Clear();
        _inFlight.Clear(); // their callers watch the stages and fail by themselves
        if (_loaded is not null)
            foreach (var w in _workers) w.Ref.Tell(new ReleaseSlice(_loaded.Epoch));
        _loaded = null;
        _state = "empty";
    }

    private void OnGenerate(Generate g)
    {
        if (_loaded is not null && _inFlight.Count >= _settings.MaxInFlight)
        {
            if (_queued.Count >= _settings.MaxQueued)
            {
                Sender.Tell(new RequestFailed(g.RequestId, "coordinator", $"busy: {_inFlight.Count} requests in flight and {_queued.Count} queued; retry later"));
                return;
            }
            _queued.Enqueue((g, Sender));
            return;
        }
        Start(g, Sender);
    }

    private void Start(Generate g, IActorRef caller)
    {
        string replyTo = Akka.Serialization.Serialization.SerializedActorPath(caller);
        if (_loaded is null)
        {
            caller.Tell(new RequestFailed(g.RequestId, "coordinator", $"no model is loaded (state: {_state})"));
            return;
        }
        if (g.InputIds.Length == 0 || g.InputIds[0].Length == 0 || g.InputIds.Any(r => r.Length != g.InputIds[0].Length))
        {
            caller.Tell(new RequestFailed(g.RequestId, "coordinator", "input_ids must be non-empty rows of equal length"));
            return;
        }
        if (g.InputIds.SelectMany(r => r).Any(id => id < 0 || id >= _loaded.Vocab))
        {
            caller.Tell(new RequestFailed(g.RequestId, "coordinator", $"a token id is outside the vocabulary (0..{_loaded.Vocab - 1})"));
            return;
        }
        var mask = g.AttentionMask ?? g.InputIds.Select(r => r.Select(_ => 1L).ToArray()).ToArray();
        long[][] positions = g.PositionIds
            ?? (g.MaxNewTokens == 0
                ? g.InputIds.Select(r => Enumerable.Range(0, r.Length).Select(i => (long)i).ToArray()).ToArray() // forward: 0..T-1, as HF
                : mask.Select(r => { long c = 0; return r.Select(m => { c += m; return m == 0 ? 1L : c - 1; }).ToArray(); }).ToArray());
        var gc = _loaded.GenerationConfig;
        long[] eos = gc["eos_token_id"] is JsonArray a ? a.Select(x => x!.GetValue<long>()).ToArray()
            : gc["eos_token_id"] is JsonValue v ? new[] { v.GetValue<long>() } : Array.Empty<long>();
        long pad = gc["pad_token_id"] is JsonValue p ? p.GetValue<long>() : eos.FirstOrDefault();
        var state = new GenerationState(g.MaxNewTokens, g.IgnoreEos, eos, pad, new bool[g.InputIds.Length], g.Sampling, _loaded.Epoch,
            Akka.Serialization.Serialization.SerializedActorPath(Self),
            g.Sampling.RepetitionPenalty != 1.0 ? g.InputIds : null); // the ids so far travel only when a penalty needs them
        _inFlight[g.RequestId] = (caller, DateTime.UtcNow);
        var first = ((ExtendedActorSystem)Context.System).Provider.ResolveActorRef(_loaded.Route[0].WorkerPath);
        first.TellChunked(new StageInput(g.RequestId, 0, 0, null, g.InputIds, mask, positions, replyTo, state), caller);
    }
}
