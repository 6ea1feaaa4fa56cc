using Akka.Actor;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// What the coordinator needs to know of a model to plan it, read from its folder off the actor's thread: the
/// config and meta model (shapes only), the checkpoint's tensors, the dtype to load at, the stop tokens, and
/// whether the coordinator's node can read the files itself (then a worker beside it serves streamed slices).
/// </summary>
public sealed record ModelDescription(string Folder, PretrainedConfig Config, CausalLMModel Meta,
    IReadOnlyList<SliceTensor> Tensors, DType DType, StopTokens Stop, bool ReadableHere)
{
    /// <summary>Reads config.json, generation_config.json and the checkpoint's headers (no weights).</summary>
    public static ModelDescription Read(LoadModel request, Func<string, bool> readableHere)
    {
        string folder = ModelLocator.Locate(request.Model);
        var config = PretrainedConfig.FromFolder(folder);
        var meta = AutoModel.FromConfig(config);
        // Quantize on load: the Linears to be packed count as packed (codes and scales), as a pre-quantized checkpoint's do.
        if (request.Quantize is { } q) Modeling.Quantization.RoundToNearest.PlanModel(meta, q.Method, q.GroupSize, q.Head);
        using var ckpt = Checkpoint.Open(folder, request.Variant);
        var dtype = PreTrainedModel.ResolveDType(request.DType, config, ckpt.Tensors.Select(t => t.Info.DType));
        var tensors = ckpt.Tensors.Select(t => new SliceTensor(t.Name, DTypes.Code(t.Info.DType), t.Info.Shape)).ToList();
        var stop = StopTokens.From(PreTrainedModel.LoadGenerationConfig(folder, config));
        return new ModelDescription(folder, config, meta, tensors, dtype, stop, readableHere(folder));
    }
}

/// <summary>A plan ready to send: each worker's slice and the model as it will be once every slice is in.</summary>
public sealed record LoadPlan(IReadOnlyList<(WorkerInfo Worker, LoadSlice Slice)> Slices, ModelRecord Result);

/// <summary>
/// Plans a described model over the registered workers (pure: no I/O, no actors): budgets per <c>node/device</c>
/// (overridden by max_memory), the device map (a strategy through <see cref="ClusterPlanner"/>, or a given map or
/// device checked against budgets), the pipeline route, and each worker's slice — its module prefixes, the
/// checkpoint tensors it needs (tied weights included) and the shard reader to stream from when it has no copy.
/// </summary>
public static class SlicePlanner
{
    /// <param name="kvCap">The most KV-cache bytes a device may hold (<c>shardpipe.kv-cache-budget</c>; 0 = what its budget leaves after the weights).</param>
    /// <param name="speeds">The devices' measured speeds (<c>shardpipe.placement.balance = speed</c>): a strategy then weighs each by budget ×
    /// relative speed (<see cref="DeviceSpeeds"/>); null = by budgets alone.</param>
    public static LoadPlan Plan(ModelDescription model, LoadModel request, IReadOnlyList<WorkerInfo> workers, int epoch, long kvCap = 0,
        IReadOnlyDictionary<DeviceId, double>? speeds = null)
    {
        if (workers.Count == 0) throw new ClusterException("no device workers have joined the cluster");
        var ordered = Ordered(workers);
        var budgets = Budgets(ordered, request, ignoreUnknown: false);
        var meta = model.Meta;
        var tree = meta.ToPlacementTree();
        var spec = DeviceMapSpec.Parse(request.DeviceMap);
        PlanResult plan;
        if (spec.Strategy is { } strategy)
        {
            plan = ClusterPlanner.Plan(new ClusterPlanRequest
            {
                Model = tree, Devices = budgets, Strategy = strategy, DType = model.DType,
                NoSplitModuleClasses = request.NoSplitModuleClasses ?? meta.NoSplitModules.ToArray(),
                Layers = Enumerable.Range(0, meta.NumLayers).Select(meta.LayerPath).ToList(),
                Speeds = speeds,
            });
        }
        else
        {
            spec.Validate(tree);
            foreach (var d in spec.Devices)
                if (!budgets.Any(b => b.Id == d)) throw new PlacementException($"device_map names {d}, which is not a device of this cluster");
            var map = spec.Entries.ToList();
            var usage = DevicePlanner.Usage(tree, map, budgets, model.DType, memoryBytes: true);
            foreach (var u in usage)
                if (u.Budget is { } b && u.Bytes > b)
                    throw new PlacementException($"{u.Device} would hold {ByteSize.Format((long)u.Bytes)} but its budget is {ByteSize.Format((long)b)}: {ByteSize.Format((long)(u.Bytes - b))} missing");
            plan = new PlanResult(map, usage);
        }

        WorkerInfo On(DeviceId d) => ordered.First(w => w.Id == d);
        var route = PipelineRoute.Build(meta, plan.DeviceMap, d => On(d).Path);
        // The reader lives beside a worker with local shards: same node address, path /user/shard-reader.
        var reader = model.ReadableHere ? ordered.FirstOrDefault(w => w.HasLocalCheckpoints && ActorPath.TryParse(w.Path, out _)) : null;
        string? readerPath = reader is null ? null : $"{ActorPath.Parse(reader.Path).Address}/user/shard-reader";
        string configJson = model.Config.Values.ToJsonString();
        var tied = tree.TiedParameters();
        var slices = new List<(WorkerInfo, LoadSlice)>();
        foreach (var worker in ordered)
        {
            var prefixes = plan.DeviceMap.Where(kv => kv.Value == worker.Id).Select(kv => kv.Key).ToArray();
            if (prefixes.Length == 0) continue;
            bool Include(string key) => ModulePath.CoveredByAny(prefixes, key);
            // Tied weights: a head on this worker needs the embedding tensor the checkpoint stores.
            var tiedKeys = tied.Where(g => g.Any(Include)).SelectMany(g => g).ToHashSet(StringComparer.Ordinal);
            var tensors = model.Tensors.Where(t => Include(t.Name) || tiedKeys.Contains(t.Name)).ToArray();
            long planned = (long)plan.Devices.Where(u => u.Device == worker.Id).Sum(u => u.Bytes);
            slices.Add((worker, new LoadSlice(epoch, model.Folder, request.Variant, DTypes.TorchName(model.DType), configJson, prefixes, planned, readerPath, route, tensors, request.Quantize)));
        }
        // KV cache per device: the bytes one token takes on its layers, within what its budget leaves after the weights
        // (at least one row of the full context; shardpipe.kv-cache-budget, when set, is the cap). Disk devices hold no caches of their own (their layers run on the CPU).
        long perLayer = KvBytesPerTokenPerLayer(model.Config, DTypes.Size(model.DType));
        long kvFloorPositions = model.Config.GetLongOrNull("max_position_embeddings") ?? model.Config.GetLongOrNull("n_positions") ?? 2048;
        var layersOn = route.GroupBy(h => ordered.First(w => w.Path == h.WorkerPath).Id).ToDictionary(g => g.Key, g => g.Sum(h => (long)h.LayerCount));
        var deviceUsage = plan.Devices.Select(u =>
        {
            long budget = (long)(u.Budget ?? 0), planned = (long)u.Bytes;
            long perToken = u.Device.Kind == "disk" ? 0 : layersOn.GetValueOrDefault(u.Device) * perLayer;
            // At least one row of the model's whole context, so a tight weight budget does not refuse every request.
            long kvBudget = perToken == 0 || budget <= 0 ? 0 : Math.Max(budget - planned, kvFloorPositions * perToken);
            if (kvCap > 0 && perToken > 0) kvBudget = kvBudget == 0 ? kvCap : Math.Min(kvBudget, kvCap);
            return new DeviceUsage(u.Device.ToString(), planned, 0, budget, KvBytesPerToken: perToken, KvBudgetBytes: kvBudget);
        }).ToArray();
        var stages = route.Select(h => new StageInfo(ordered.First(w => w.Path == h.WorkerPath).ToString(), h.WorkerPath)).ToArray();
        var deviceMap = plan.DeviceMap.Select(kv => new DeviceMapEntry(kv.Key, kv.Value.ToString())).ToArray();
        long positions = model.Config.GetLongOrNull("max_position_embeddings") ?? model.Config.GetLongOrNull("n_positions") ?? 2048;
        return new LoadPlan(slices, new ModelRecord(request, model.Folder, epoch, route, deviceMap, deviceUsage, stages, model.Stop.Eos, model.Stop.Pad,
            meta.VocabSize, positions, 0, Array.Empty<DeviceMapEntry>()));
    }

    /// <summary>
    /// Bytes one token of one row adds to one layer's KV cache: keys and values of every KV head
    /// (<c>num_key_value_heads</c>, else the attention heads; GPT-2's <c>n_head</c>) × <c>head_dim</c> (else hidden ÷ heads)
    /// at the model's dtype. An upper bound for sliding-window models.
    /// </summary>
    public static long KvBytesPerTokenPerLayer(PretrainedConfig config, int dtypeBytes)
    {
        long heads = config.GetLongOrNull("num_attention_heads") ?? config.GetLongOrNull("n_head") ?? 0;
        long kvHeads = config.GetLongOrNull("num_key_value_heads") ?? heads;
        long hidden = config.GetLongOrNull("hidden_size") ?? config.GetLongOrNull("n_embd") ?? 0;
        long headDim = config.GetLongOrNull("head_dim") ?? (heads > 0 ? hidden / heads : 0);
        return 2 * kvHeads * headDim * dtypeBytes;
    }

    /// <summary>Pipeline order: nodes by name (node-2 before node-10), so that a plan does not depend on who registered first.</summary>
    public static List<WorkerInfo> Ordered(IEnumerable<WorkerInfo> workers) => workers.OrderBy(w => w.Node, NaturalOrder.Instance).ToList();

    /// <summary>Each worker's budget, overridden by the request's max_memory (a device it names that is not here is an error, or skipped when <paramref name="ignoreUnknown"/>: a lost node).</summary>
    public static List<(DeviceId Id, double Bytes)> Budgets(IReadOnlyList<WorkerInfo> ordered, LoadModel request, bool ignoreUnknown)
    {
        var budgets = ordered.Select(w => (w.Id, (double)w.Budget)).ToList();
        if (request.MaxMemory is { } mm)
            foreach (var (device, bytes) in MaxMemory.Parse(mm))
            {
                int i = budgets.FindIndex(b => b.Id == device);
                if (i >= 0) budgets[i] = (device, bytes);
                else if (!ignoreUnknown) throw new PlacementException($"max_memory names {device}, which is not a device of this cluster ({string.Join(", ", budgets.Select(b => b.Id))})");
            }
        return budgets;
    }

    /// <summary>A max_memory string without the entries naming devices not in <paramref name="devices"/> (lost or drained); null when none is left.</summary>
    public static string? KeepMaxMemory(string? maxMemory, IEnumerable<DeviceId> devices)
    {
        if (maxMemory is null) return null;
        var here = devices.ToHashSet();
        return string.Join(",", MaxMemory.Parse(maxMemory).Where(e => here.Contains(e.Device)).Select(e => $"{e.Device}={(long)e.Bytes}")) is { Length: > 0 } kept ? kept : null;
    }

    /// <summary>
    /// The plan after a recovery: <see cref="RecoveryPlanner"/> keeps every module of a surviving worker in place and
    /// moves the lost ones; the result is planned as an explicit map over the survivors (budgets checked again).
    /// </summary>
    /// <param name="holders">Surviving workers that still hold their slice of the served epoch; the modules of any other device move.</param>
    public static (LoadPlan Plan, RecoveryPlan Moves) Replan(ModelDescription model, ModelRecord served, IReadOnlyList<WorkerInfo> survivors,
        IReadOnlySet<string> holders, int epoch, long kvCap = 0)
    {
        if (survivors.Count == 0) throw new PlacementException("no device workers survive to hold the model");
        var request = served.Request ?? throw new ClusterException($"no load request is known for {served.Folder}; load it again");
        var ordered = Ordered(survivors);
        var budgets = Budgets(ordered, request, ignoreUnknown: true);
        var map = served.DeviceMap.Select(e => new KeyValuePair<string, DeviceId>(e.Module, DeviceId.Parse(e.Device))).ToList();
        var intact = ordered.Where(w => holders.Contains(w.Path)).Select(w => w.Id).ToHashSet();
        var moves = RecoveryPlanner.Replan(model.Meta.ToPlacementTree(), model.DType, map, budgets, intact);
        string json = new System.Text.Json.Nodes.JsonObject(moves.DeviceMap.Select(kv =>
            new KeyValuePair<string, System.Text.Json.Nodes.JsonNode?>(kv.Key, kv.Value.ToString()))).ToJsonString();
        // max_memory entries naming lost devices are dropped; the rest still bound the survivors.
        var plan = Plan(model, request with { DeviceMap = json, MaxMemory = KeepMaxMemory(request.MaxMemory, budgets.Select(b => b.Id)) }, ordered, epoch, kvCap);
        var result = plan.Result with
        {
            Request = request, Recoveries = served.Recoveries + 1,
            Moved = moves.Moved.Select(m => new DeviceMapEntry(m.Module, m.To.ToString())).ToArray(),
        };
        return (plan with { Result = result }, moves);
    }
}
