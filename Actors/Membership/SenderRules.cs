using Akka.Actor;
using Akka.Cluster;

namespace ShardPipe.Actors.Membership;

/// <summary>
/// Who may send what (one home for the intake rules, with or without TLS). Actors of this node's own ActorSystem are
/// trusted; a remote sender must be a cluster member with the role a command needs — so a client or a stranger that
/// reaches a port can use the client entry points (status, load, unload, requests) and nothing else.
/// </summary>
public static class SenderRules
{
    /// <summary>The sender's node address (this node's own for a local actor).</summary>
    public static Address NodeOf(ActorSystem system, IActorRef sender) =>
        sender.Path.Address.HasLocalScope ? Cluster.Get(system).SelfAddress : sender.Path.Address;

    /// <summary>A local actor, or one on a member (Joining to Leaving, not Down) that has <paramref name="role"/>.</summary>
    public static bool IsMemberWithRole(ActorSystem system, IActorRef sender, string role)
    {
        if (sender.Path.Address.HasLocalScope || sender.Path.Address.Equals(Cluster.Get(system).SelfAddress)) return true;
        return Cluster.Get(system).State.Members.Any(m => m.Address.Equals(sender.Path.Address) && m.HasRole(role)
            && m.Status is MemberStatus.Joining or MemberStatus.WeaklyUp or MemberStatus.Up or MemberStatus.Leaving);
    }

    /// <summary>The addresses of members that are Up, reachable from this node, and have <paramref name="role"/>.</summary>
    public static List<string> ReachableUp(ActorSystem system, string role)
    {
        var state = Cluster.Get(system).State;
        return state.Members.Where(m => m.Status == MemberStatus.Up && m.HasRole(role) && !state.Unreachable.Contains(m)).Select(m => m.Address.ToString()).ToList();
    }

    /// <summary>Commands to a worker (slices, releases, commits) come from the coordinator singleton on a coordinator member.</summary>
    public static bool IsCoordinator(ActorSystem system, IActorRef sender) =>
        IsMemberWithRole(system, sender, Roles.Coordinator) && sender.Path.Elements is ["user", Roles.SingletonName, Roles.SingletonName];

    /// <summary>Registrations come from a worker member and name actors of the sender's own node only.</summary>
    public static string? RegistrationProblem(ActorSystem system, IActorRef sender, IEnumerable<string> actorPaths)
    {
        if (!IsMemberWithRole(system, sender, Roles.Worker)) return $"{sender.Path.Address} is not a worker member of this cluster";
        var from = NodeOf(system, sender);
        foreach (var p in actorPaths)
        {
            if (!ActorPath.TryParse(p, out var path)) return $"'{p}' is not an actor path";
            var at = path.Address.HasLocalScope ? Cluster.Get(system).SelfAddress : path.Address;
            if (!at.Equals(from)) return $"the registration from {from} names an actor on {at}";
        }
        return null;
    }
}
