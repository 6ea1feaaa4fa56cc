using MessagePack;

namespace ShardPipe.Messages;

/// <summary>A client asks the coordinator to load a model across the cluster.</summary>
[MessagePackObject]
public sealed record LoadModel(
    [property: Key(0)] string RequestId,
    [property: Key(1)] string Model,
    [property: Key(2)] string? Variant,
    [property: Key(3)] string? DType,
    [property: Key(4)] string DeviceMap,
    [property: Key(5)] string? MaxMemory,
    [property: Key(6)] string[]? NoSplitModuleClasses,
    [property: Key(7)] string? ProgressTo = null,
    [property: Key(8)] QuantizeRequest? Quantize = null) : IShardPipeMessage;

/// <summary>Quantize on load (<c>--quantize</c>): "int8" or "int4", inputs per scale group (−1: per output channel), and whether the untied head too.</summary>
[MessagePackObject]
public sealed record QuantizeRequest(
    [property: Key(0)] string Method,
    [property: Key(1)] int GroupSize,
    [property: Key(2)] bool Head);

/// <summary>The coordinator's answer when every slice is materialised.</summary>
[MessagePackObject]
public sealed record ModelLoaded(
    [property: Key(0)] string RequestId,
    [property: Key(1)] int PlanEpoch,
    [property: Key(4)] DeviceUsage[] Devices,
    [property: Key(5)] double LoadSeconds,
    [property: Key(6)] StageInfo[] Stages,
    [property: Key(7)] DeviceMapEntry[] DeviceMap) : IShardPipeMessage;
// Keys 2 and 3 (the device map as two parallel arrays) are retired: see DeviceMap.

/// <summary>One entry of a cluster's device map: a module prefix and its <c>node/device</c>.</summary>
[MessagePackObject]
public sealed record DeviceMapEntry(
    [property: Key(0)] string Module,
    [property: Key(1)] string Device);

/// <summary>A pipeline stage: its device (node/device) and its worker's actor path.</summary>
[MessagePackObject]
public sealed record StageInfo(
    [property: Key(0)] string Device,
    [property: Key(1)] string WorkerPath);

[MessagePackObject]
public sealed record DeviceUsage(
    [property: Key(0)] string Device,
    [property: Key(1)] long PlannedBytes,
    [property: Key(2)] long LoadedBytes,
    [property: Key(3)] long BudgetBytes,
    [property: Key(4)] bool Streamed = false,
    // KV cache: bytes one token of one row takes on this device's layers, the bytes its caches may hold (the budget
    // left after the weights, or shardpipe.kv-cache-budget), and what admitted requests' worst cases reserve now.
    [property: Key(5)] long KvBytesPerToken = 0,
    [property: Key(6)] long KvBudgetBytes = 0,
    [property: Key(7)] long KvReservedBytes = 0);

/// <summary>A load (or anything it needed) failed; names the node or file at fault.</summary>
[MessagePackObject]
public sealed record LoadFailed(
    [property: Key(0)] string RequestId,
    [property: Key(1)] string Reason) : IShardPipeMessage;

[MessagePackObject]
public sealed record GetStatus([property: Key(0)] string RequestId) : IShardPipeMessage;

/// <summary>
/// What the cluster is doing with its model — the coordinator's state, one closed set for its behaviour and its
/// status. Travels as an integer: values are append-only.
/// </summary>
public enum ClusterState
{
    /// <summary>A new coordinator hears what the workers hold before it decides what the cluster serves.</summary>
    Starting = 0,
    /// <summary>No model.</summary>
    Empty = 1,
    /// <summary>A model is being planned and loaded.</summary>
    Loading = 2,
    /// <summary>The model is served.</summary>
    Ready = 3,
    /// <summary>Stages of the served model were lost: the lost modules are being re-planned and loaded.</summary>
    Recovering = 4,
    /// <summary>The survivors lack the memory for the lost modules: it recovers when a node with room joins.</summary>
    Degraded = 5,
    /// <summary>The last load failed (the detail says why).</summary>
    Failed = 6,
    /// <summary>The whole cluster is shutting down: no recovery starts.</summary>
    Stopping = 7,
    /// <summary>Layers move for a drain or a rebalance under a new epoch (only what moves is read); requests resume on the new route.</summary>
    Moving = 8,
}

/// <summary>
/// Answer to <see cref="GetStatus"/>: the model's <see cref="ClusterState"/>
/// and why, the registered nodes, devices refused at registration, and the loaded model's map and stages; after a
/// recovery (<c>recovering</c>, <c>degraded</c>), what moved where in the last one and how many there were; the nodes
/// being drained (<see cref="Drains"/>).
/// </summary>
[MessagePackObject]
public sealed record ClusterStatus(
    [property: Key(0)] string RequestId,
    [property: Key(1)] ClusterState State,
    [property: Key(2)] string? Model,
    [property: Key(3)] string[] Nodes,
    [property: Key(6)] DeviceUsage[] Devices,
    [property: Key(7)] StageInfo[] Stages,
    [property: Key(8)] DeviceMapEntry[] DeviceMap,
    [property: Key(9)] string? Detail = null,
    [property: Key(10)] RefusedDevice[]? Refused = null,
    [property: Key(11)] int PlanEpoch = 0,
    [property: Key(12)] int InFlight = 0,
    [property: Key(13)] int Queued = 0,
    [property: Key(14)] DeviceMapEntry[]? Moved = null,
    [property: Key(15)] int Recoveries = 0,
    [property: Key(16)] DeviceTiming[]? Timings = null,
    [property: Key(20)] NodeDrain[]? Drains = null) : IShardPipeMessage
{
    /// <summary>The state as people and JSON read it: <c>ready</c>, <c>recovering</c>…</summary>
    [IgnoreMember] public string StateName => State.ToString().ToLowerInvariant();
}

/// <summary>A device's node timing as its worker last reported it (<see cref="StageTiming"/>), with its measured speed (bytes of weights per second; null when not reported).</summary>
[MessagePackObject]
public sealed record DeviceTiming(
    [property: Key(0)] string Device,
    [property: Key(1)] StageTiming Timing,
    [property: Key(2)] double? Speed = null);
// Keys 4 and 5 (the device map as two parallel arrays) are retired: see DeviceMap.

/// <summary>A device the coordinator refused when its node registered (for example cuda:0 on a build without CUDA).</summary>
[MessagePackObject]
public sealed record RefusedDevice(
    [property: Key(0)] string Device,
    [property: Key(1)] string Reason);

[MessagePackObject]
public sealed record UnloadModel([property: Key(0)] string RequestId) : IShardPipeMessage;

[MessagePackObject]
public sealed record ModelUnloaded([property: Key(0)] string RequestId) : IShardPipeMessage;

/// <summary>One stop of the pipeline: which worker runs which part of the model.</summary>
[MessagePackObject]
public sealed record PipelineHop(
    [property: Key(0)] string WorkerPath,
    [property: Key(1)] bool Embed,
    [property: Key(2)] int FirstLayer,
    [property: Key(3)] int LayerCount,
    [property: Key(4)] bool Norm,
    [property: Key(5)] bool Head);

/// <summary>The coordinator assigns a device worker its slice (idempotent per epoch).</summary>
[MessagePackObject]
public sealed record LoadSlice(
    [property: Key(0)] int PlanEpoch,
    [property: Key(1)] string Model,
    [property: Key(2)] string? Variant,
    [property: Key(3)] string DType,
    [property: Key(4)] string ConfigJson,
    [property: Key(5)] string[] ModulePrefixes,
    [property: Key(6)] long PlannedBytes,
    [property: Key(7)] string? ShardReaderPath,
    [property: Key(8)] PipelineHop[] Route,
    [property: Key(9)] SliceTensor[] Tensors,
    [property: Key(10)] QuantizeRequest? Quantize = null) : IShardPipeMessage
{
    /// <summary>
    /// Whether <paramref name="other"/> is this same assignment (a repeat, for idempotence): same epoch, model, variant,
    /// dtype, quantization, modules and route. Two coordinators that planned one epoch (the first died mid-plan) differ here.
    /// </summary>
    public bool SamePlan(LoadSlice other) =>
        PlanEpoch == other.PlanEpoch && Model == other.Model && Variant == other.Variant && DType == other.DType
        && Equals(Quantize, other.Quantize) && ModulePrefixes.SequenceEqual(other.ModulePrefixes) && Route.SequenceEqual(other.Route);
}

/// <summary>A checkpoint tensor of a slice (so a node without the files knows what to stream).</summary>
[MessagePackObject]
public sealed record SliceTensor(
    [property: Key(0)] string Name,
    [property: Key(1)] string DType,
    [property: Key(2)] long[] Shape);

[MessagePackObject]
public sealed record SliceLoaded(
    [property: Key(0)] int PlanEpoch,
    [property: Key(1)] string WorkerPath,
    [property: Key(2)] long Bytes,
    [property: Key(3)] int Tensors,
    [property: Key(4)] bool Streamed) : IShardPipeMessage, IPlanEpochFact;

[MessagePackObject]
public sealed record SliceFailed(
    [property: Key(0)] int PlanEpoch,
    [property: Key(1)] string WorkerPath,
    [property: Key(2)] string Reason) : IShardPipeMessage, IPlanEpochFact;

[MessagePackObject]
public sealed record SliceProgress(
    [property: Key(0)] int PlanEpoch,
    [property: Key(1)] string WorkerPath,
    [property: Key(2)] int TensorsDone,
    [property: Key(3)] int TensorsTotal,
    [property: Key(4)] long BytesDone) : IShardPipeMessage, IPlanEpochFact;

[MessagePackObject]
public sealed record ReleaseSlice([property: Key(0)] int PlanEpoch) : IShardPipeMessage;

/// <summary>
/// A worker without a local copy asks a shard reader for one tensor: streamed as <see cref="TensorChunk"/>s, or, when
/// <see cref="Bulk"/> and the reader runs a bulk channel, offered over a socket (<see cref="BulkOffer"/>).
/// </summary>
[MessagePackObject]
public sealed record ReadTensor(
    [property: Key(0)] string TransferId,
    [property: Key(1)] string Model,
    [property: Key(2)] string? Variant,
    [property: Key(3)] string Tensor,
    [property: Key(4)] int Window,
    [property: Key(5)] bool Bulk = false) : IShardPipeMessage;

/// <summary>
/// The reader's answer to a bulk <see cref="ReadTensor"/>: connect to <see cref="Host"/>:<see cref="Port"/>, present
/// <see cref="Token"/> (good for one transfer, briefly), and receive the tensor's bytes in checksummed chunks of at
/// most <see cref="ChunkBytes"/>, acknowledging each; the reader keeps at most <see cref="Window"/> unacknowledged.
/// </summary>
[MessagePackObject]
public sealed record BulkOffer(
    [property: Key(0)] string TransferId,
    [property: Key(1)] string Host,
    [property: Key(2)] int Port,
    [property: Key(3)] byte[] Token,
    [property: Key(4)] string DType,
    [property: Key(5)] long[] Shape,
    [property: Key(6)] long TotalBytes,
    [property: Key(7)] int ChunkBytes,
    [property: Key(8)] int Window) : IShardPipeMessage;

/// <summary>The reader's header for a streamed tensor: what will arrive.</summary>
[MessagePackObject]
public sealed record TensorHeader(
    [property: Key(0)] string TransferId,
    [property: Key(1)] string DType,
    [property: Key(2)] long[] Shape,
    [property: Key(3)] long TotalBytes) : IShardPipeMessage;

[MessagePackObject]
public sealed record ReadFailed(
    [property: Key(0)] string TransferId,
    [property: Key(1)] string Reason) : IShardPipeMessage;
