using MessagePack;

namespace ShardPipe.Messages;

/// <summary>
/// A loaded model as the coordinator serves it, kept by every worker of the model (<see cref="ModelCommitted"/>) and
/// reported back in each registration, so that a coordinator that moved to another node rebuilds its view from the
/// workers: the load request (to re-plan from), the epoch, the route, the map and the stop tokens.
/// </summary>
[MessagePackObject]
public sealed record ModelRecord(
    [property: Key(0)] LoadModel? Request,
    [property: Key(1)] string Folder,
    [property: Key(2)] int PlanEpoch,
    [property: Key(3)] PipelineHop[] Route,
    [property: Key(4)] DeviceMapEntry[] DeviceMap,
    [property: Key(5)] DeviceUsage[] Devices,
    [property: Key(6)] StageInfo[] Stages,
    [property: Key(7)] long[] EosTokenIds,
    [property: Key(8)] long PadTokenId,
    [property: Key(9)] long Vocab,
    [property: Key(10)] long MaxPositions,
    [property: Key(11)] int Recoveries,
    [property: Key(12)] DeviceMapEntry[] Moved);

/// <summary>The coordinator tells each worker of a model that its epoch is the one served (every slice is in).</summary>
[MessagePackObject]
public sealed record ModelCommitted([property: Key(0)] ModelRecord Record) : IShardPipeMessage;

/// <summary>What a worker holds, reported with each registration: its slice's epoch, modules and bytes, and the model's record once committed.</summary>
[MessagePackObject]
public sealed record HeldSlice(
    [property: Key(0)] int PlanEpoch,
    [property: Key(1)] string Model,
    [property: Key(2)] string[] Modules,
    [property: Key(3)] long Bytes,
    [property: Key(4)] ModelRecord? Record);
