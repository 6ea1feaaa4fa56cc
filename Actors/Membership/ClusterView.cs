using Akka.Actor;
using Akka.Cluster;

namespace ShardPipe.Actors.Membership;

/// <summary>
/// This node's view of the cluster as <see cref="CoordinatorFailover"/> takes it: the members keep-majority counts (Up
/// or Leaving), oldest first. <c>Cluster.State</c> is updated by a subscriber of its own and may not yet show the event
/// an actor is handling, so the actor adds what it has seen: <c>lost</c> names nodes it knows to be unreachable.
/// </summary>
public static class ClusterView
{
    public static IReadOnlyList<MemberView> OldestFirst(ActorSystem system, Func<string, bool>? lost = null)
    {
        var state = Cluster.Get(system).State;
        var counted = state.Members.Where(m => m.Status is MemberStatus.Up or MemberStatus.Leaving).ToList();
        counted.Sort((a, b) => a.IsOlderThan(b) ? -1 : b.IsOlderThan(a) ? 1 : 0);
        return counted.Select(m => new MemberView(m.Address.ToString(), m.HasRole(Roles.Coordinator),
            !state.Unreachable.Contains(m) && lost?.Invoke(m.Address.ToString()) != true)).ToList();
    }

    /// <summary>The counted member with the lowest address (Akka's address order: keep-majority's tie-breaker).</summary>
    public static string? LowestAddress(ActorSystem system) => Cluster.Get(system).State.Members
        .Where(m => m.Status is MemberStatus.Up or MemberStatus.Leaving).OrderBy(m => m.Address).FirstOrDefault()?.Address.ToString();

    /// <summary>This node's side is the one keep-majority keeps (<see cref="CoordinatorFailover.HasQuorum"/>).</summary>
    public static bool HasQuorum(ActorSystem system, Func<string, bool>? lost = null) =>
        CoordinatorFailover.HasQuorum(OldestFirst(system, lost), LowestAddress(system));
}
