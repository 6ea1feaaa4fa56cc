using MessagePack;

namespace ShardPipe.Messages;

/// <summary>
/// A client asks the coordinator to drain a node: the served model is re-planned without it under a new epoch (only
/// what moves is read), requests in flight resume on the new route, then the node is told to leave the cluster.
/// Answered by <see cref="LayersMoved"/> once the new epoch serves, or <see cref="MoveFailed"/> (nothing changed).
/// </summary>
[MessagePackObject]
public sealed record DrainNode(
    [property: Key(0)] string RequestId,
    [property: Key(1)] string Node) : IShardPipeMessage;

/// <summary>
/// A client asks the coordinator to re-plan the served model over every registered node (the planner's placement for
/// the model's strategy) and move what must move, live. Answered as <see cref="DrainNode"/> is.
/// </summary>
[MessagePackObject]
public sealed record RebalanceModel([property: Key(0)] string RequestId) : IShardPipeMessage;

/// <summary>
/// A drain or rebalance is done: <see cref="PlanEpoch"/> serves (unchanged when nothing had to move), what moved
/// where, the seconds from the request to the new epoch serving, and the nodes told to leave.
/// </summary>
[MessagePackObject]
public sealed record LayersMoved(
    [property: Key(0)] string RequestId,
    [property: Key(1)] int PlanEpoch,
    [property: Key(2)] double Seconds,
    [property: Key(3)] DeviceMapEntry[] Moved,
    [property: Key(4)] string[] Leaving) : IShardPipeMessage;

/// <summary>What kind of error a refused or failed move is, so that the client raises the matching typed error.</summary>
public enum MoveFault
{
    /// <summary>The cluster cannot do it now (its state, another move, a fault during the move): ClusterException.</summary>
    Cluster = 0,
    /// <summary>The others lack the memory for the model: PlacementException.</summary>
    Placement = 1,
    /// <summary>The request names what is not there (an unknown node) or cannot be moved: InvalidInputException.</summary>
    InvalidInput = 2,
}

/// <summary>A drain or rebalance was refused (nothing changed) or failed; the reason names the node or device.</summary>
[MessagePackObject]
public sealed record MoveFailed(
    [property: Key(0)] string RequestId,
    [property: Key(1)] string Reason,
    [property: Key(2)] MoveFault Fault) : IShardPipeMessage;

/// <summary>A node being drained, as status shows it: <c>moving</c> (its layers go to the others) or <c>leaving</c> (told to leave).</summary>
[MessagePackObject]
public sealed record NodeDrain(
    [property: Key(0)] string Node,
    [property: Key(1)] string Phase);

/// <summary>
/// The coordinator tells a drained node's workers that their node is being drained (its layers move to the others
/// under <see cref="PlanEpoch"/>, then it leaves). A worker reports it with every registration
/// (<see cref="RegisterWorker.Drained"/>), so a coordinator that takes over mid-drain keeps the node out of its plans
/// and finishes the drain instead of forgetting it. The fact lives on the node it concerns and ends with it.
/// </summary>
[MessagePackObject]
public sealed record NodeDrained([property: Key(0)] int PlanEpoch) : IShardPipeMessage;
