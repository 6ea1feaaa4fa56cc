namespace ShardPipe.Actors.Membership;

/// <summary>
/// Cluster roles (<c>akka.cluster.roles</c>) and the coordinator singleton's names: one home for the strings that
/// hosting, intake rules and settings compare.
/// </summary>
public static class Roles
{
    /// <summary>Every node's ActorSystem name (a client's is this plus <c>-client</c>).</summary>
    public const string SystemName = "shardpipe";

    /// <summary>A member that may hold the coordinator singleton.</summary>
    public const string Coordinator = "coordinator";
    /// <summary>A member with device workers and a shard reader.</summary>
    public const string Worker = "worker";
    /// <summary>The singleton manager's and the singleton's name: the coordinator runs at <c>/user/coordinator/coordinator</c>.</summary>
    public const string SingletonName = "coordinator";
}
