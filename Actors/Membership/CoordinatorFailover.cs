namespace ShardPipe.Actors.Membership;

/// <summary>One member as the failover rules see it: its address, whether it may hold the coordinator, whether it is reachable from here.</summary>
/// <param name="Address">The member's address (<c>akka.tcp://shardpipe@host:port</c>).</param>
/// <param name="Coordinator">It has the coordinator role (it may hold the singleton).</param>
/// <param name="Reachable">No member has found it unreachable.</param>
public sealed record MemberView(string Address, bool Coordinator, bool Reachable);

/// <summary>
/// When the coordinator moves, without the actor. Akka's singleton moves only once its node is removed, and Akka's
/// split-brain resolver downs a lost node only after <c>stable-after</c> (then the singleton waits out
/// <c>down-removal-margin</c>): about 10 s on top of the failure detector. In the one clear-cut case — the coordinator's
/// node is the only member lost, and the rest are a majority — the survivors down it at once, which is what
/// keep-majority would decide after <c>stable-after</c> anyway; everything else is left to the resolver.
/// <see cref="HasQuorum"/> is the other half of the bargain: a coordinator whose side is not the one keep-majority keeps
/// decides nothing (no plan, no recovery), so the side that downed it is the only one that acts.
/// Members are given oldest first (Akka's age order: the oldest coordinator member holds the singleton) and counted
/// as keep-majority counts them: those Up or Leaving.
/// </summary>
public static class CoordinatorFailover
{
    /// <summary>
    /// The member this node should down now, or null: the oldest coordinator member (the singleton's node) when it is
    /// the only unreachable member, the reachable ones are a strict majority, and this node is the oldest reachable
    /// coordinator member (its successor: one node decides, though a second Down would do no harm).
    /// </summary>
    public static string? NodeToDown(IReadOnlyList<MemberView> oldestFirst, string self)
    {
        var holder = oldestFirst.FirstOrDefault(m => m.Coordinator);
        if (holder is null || holder.Reachable || holder.Address == self) return null;
        if (oldestFirst.Count(m => !m.Reachable) != 1) return null; // more than one lost: the resolver's decision, after stable-after
        if (2 * oldestFirst.Count(m => m.Reachable) <= oldestFirst.Count) return null; // no strict majority here
        var successor = oldestFirst.FirstOrDefault(m => m.Coordinator && m.Reachable);
        return successor?.Address == self ? holder.Address : null;
    }

    /// <summary>
    /// Whether this node's side is the one keep-majority keeps: more than half of the members reachable, or exactly
    /// half including the member with the lowest address (<paramref name="lowestAddress"/>, in Akka's address order).
    /// A coordinator without it decides nothing: the other side may already have a coordinator of its own.
    /// </summary>
    public static bool HasQuorum(IReadOnlyCollection<MemberView> members, string? lowestAddress)
    {
        int reachable = members.Count(m => m.Reachable);
        if (members.Count == 0 || 2 * reachable > members.Count) return true;
        return 2 * reachable == members.Count && members.Any(m => m.Reachable && m.Address == lowestAddress);
    }
}
