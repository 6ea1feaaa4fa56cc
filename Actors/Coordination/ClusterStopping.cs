namespace ShardPipe.Actors.Coordination;

/// <summary>
/// Told by the process that hosts every node (<c>EmbeddedCluster</c>) to the coordinator before it stops
/// them all: the coordinator answers with the same message and from then on starts no recovery, so the nodes can stop
/// in any order. Local only: it never crosses the wire.
/// </summary>
public sealed class ClusterStopping
{
    public static readonly ClusterStopping Instance = new();
    private ClusterStopping() { }
}
