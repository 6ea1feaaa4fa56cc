using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using ShardPipe.Actors.Membership;

namespace ShardPipe.Actors.Hosting;

/// <summary>
/// On every coordinator-capable node: downs the coordinator's node as soon as it is the only member lost and this node
/// is its successor on the majority side (<see cref="CoordinatorFailover.NodeToDown"/>), so that the singleton moves
/// without waiting out the split-brain resolver's <c>stable-after</c>. Thin: the rule is the pure class.
/// </summary>
public sealed class FailoverActor : ReceiveActor
{
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly Cluster _cluster = Cluster.Get(Context.System);
    private readonly HashSet<string> _downed = new(StringComparer.Ordinal);
    private readonly HashSet<string> _lost = new(StringComparer.Ordinal); // unreachable as the events say (Cluster.State may lag them)

    public FailoverActor()
    {
        Receive<ClusterEvent.UnreachableMember>(u =>
        {
            _log.Info("{0} is unreachable", u.Member.Address);
            _lost.Add(u.Member.Address.ToString());
            Decide();
        });
        Receive<ClusterEvent.ReachableMember>(r => { _lost.Remove(r.Member.Address.ToString()); Decide(); });
        Receive<ClusterEvent.MemberRemoved>(r => { _lost.Remove(r.Member.Address.ToString()); Decide(); });
        Receive<ClusterEvent.IClusterDomainEvent>(_ => Decide());
        Receive<ClusterEvent.CurrentClusterState>(_ => Decide());
    }

    public static Props Props() => Akka.Actor.Props.Create(() => new FailoverActor());

    protected override void PreStart() => _cluster.Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsSnapshot,
        typeof(ClusterEvent.IMemberEvent), typeof(ClusterEvent.IReachabilityEvent));

    protected override void PostStop() => _cluster.Unsubscribe(Self);

    private void Decide()
    {
        string self = _cluster.SelfAddress.ToString();
        if (CoordinatorFailover.NodeToDown(ClusterView.OldestFirst(Context.System, _lost.Contains), self) is not { } node || !_downed.Add(node)) return;
        _log.Warning("failover: {0} holds the coordinator and is the only member lost; this side is a majority: downing it now", node);
        _cluster.Down(Address.Parse(node));
    }
}
