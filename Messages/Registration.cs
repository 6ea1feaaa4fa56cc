using MessagePack;

namespace ShardPipe.Messages;

/// <summary>
/// What a device worker tells the coordinator, first and then every couple of seconds (so that a coordinator that moved
/// learns the cluster again): who it is, its device, its wire settings, and the slice it holds. <see cref="Speed"/>: how
/// fast its node computes, in bytes of weights per second — a short calibration at start, then its real steps
/// (<c>DeviceSpeed</c>); null from an older peer (the planner counts it as average). <see cref="Served"/>: the last model
/// record committed to this worker, kept while it loads or holds a newer epoch of that model (a recovery or move whose
/// coordinator died before committing it), so that the next coordinator still knows what the cluster serves.
/// <see cref="SeenEpoch"/>: the highest plan epoch this worker was sent (held, loading or committed), so that the next
/// coordinator never reuses an epoch a dead one already planned. <see cref="Drained"/>: this worker's node is being drained
/// (<see cref="NodeDrained"/>), so that a coordinator that takes over mid-drain finishes the drain.
/// </summary>
[MessagePackObject]
public sealed record RegisterWorker(
    [property: Key(0)] int ProtocolVersion,
    [property: Key(1)] long MaxFrameSize,
    [property: Key(2)] string NodeName,
    [property: Key(3)] WorkerDevice[] Devices,
    [property: Key(4)] string[] LocalModelRoots,
    [property: Key(5)] HeldSlice? Holding = null,
    [property: Key(6)] StageTiming? Timing = null,
    [property: Key(7)] double? Speed = null,
    [property: Key(8)] ModelRecord? Served = null,
    [property: Key(9)] int SeenEpoch = 0,
    [property: Key(10)] bool Drained = false) : IShardPipeMessage;

/// <summary>
/// How a worker's node has been running: the median of its recent step times (compute per hop) and of the activation
/// hops it received (send to receive), how many steps it ran, and the mean rows of its recent steps (continuous
/// batching merges requests' steps). Reported with every registration, shown in status.
/// </summary>
[MessagePackObject]
public sealed record StageTiming(
    [property: Key(0)] double StepP50Ms,
    [property: Key(1)] double HopP50Ms,
    [property: Key(2)] long Steps,
    [property: Key(3)] double RowsPerStep = 0,
    [property: Key(4)] PrefixCacheFigures? PrefixCache = null);

/// <summary>
/// A stage's prefix cache (<c>shardpipe.prefix-cache</c>): prompt tokens its first stage planned and of those the ones
/// reused from cached blocks (the hit rate is their ratio), the bytes and blocks it holds, blocks evicted, and first
/// steps it sent back because it lacked a block the first stage planned to reuse.
/// </summary>
[MessagePackObject]
public sealed record PrefixCacheFigures(
    [property: Key(0)] long PromptTokens,
    [property: Key(1)] long ReusedTokens,
    [property: Key(2)] long CachedBytes,
    [property: Key(3)] int Blocks,
    [property: Key(4)] long Evictions,
    [property: Key(5)] long Restarts)
{
    [IgnoreMember] public double HitRate => PromptTokens == 0 ? 0 : (double)ReusedTokens / PromptTokens;
}

/// <summary>
/// A device a node offers, with its memory budget and the path of its device-worker actor; <see cref="Unusable"/>
/// says why the node cannot compute on it (for example a CUDA device on a build without CUDA), null when it can.
/// </summary>
[MessagePackObject]
public sealed record WorkerDevice(
    [property: Key(0)] string Device,
    [property: Key(1)] long BudgetBytes,
    [property: Key(2)] string ActorPath,
    [property: Key(3)] string? Unusable = null);

[MessagePackObject]
public sealed record WorkerRegistered([property: Key(0)] string NodeName) : IShardPipeMessage;

/// <summary>
/// The coordinator refuses a node: for good (protocol version or frame size differ; the node logs it and stays out),
/// or, with <see cref="Transient"/>, for now (the sender is not yet a worker member — a node still joining keeps
/// registering).
/// </summary>
[MessagePackObject]
public sealed record WorkerRefused(
    [property: Key(0)] string NodeName,
    [property: Key(1)] string Reason,
    [property: Key(2)] bool Transient = false) : IShardPipeMessage;
