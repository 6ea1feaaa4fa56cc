using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using ShardPipe.Messages;
using ShardPipe.Actors.Settings;

namespace ShardPipe.Actors.Hosting;

/// <summary>
/// The protocol handshake between nodes (<c>/user/handshake</c> on every node). When a member comes up, each node
/// sends it a <see cref="Hello"/> with its protocol version and Akka.Remote maximum frame size. On a mismatch both
/// sides log the reason, and the node that joined later is refused: the older side downs it, and the newer downs
/// itself, so it leaves the cluster instead of exchanging messages the other cannot read (or frames it would drop).
/// </summary>
public sealed class HandshakeActor : ReceiveActor
{
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly Cluster _cluster = Cluster.Get(Context.System);
    private readonly Hello _hello;

    public HandshakeActor(NodeSettings settings, int protocolVersion)
    {
        _hello = new Hello(protocolVersion, settings.MaxFrameSize, settings.NodeName);
        Receive<ClusterEvent.MemberUp>(up => Greet(up.Member));
        Receive<ClusterEvent.CurrentClusterState>(state =>
        {
            foreach (var m in state.Members.Where(m => m.Status == MemberStatus.Up)) Greet(m);
        });
        Receive<Hello>(OnHello);
    }

    protected override void PreStart() => _cluster.Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsSnapshot, typeof(ClusterEvent.MemberUp));
    protected override void PostStop() => _cluster.Unsubscribe(Self);

    private void Greet(Member m)
    {
        if (m.Address.Equals(_cluster.SelfAddress)) return;
        Context.ActorSelection(new RootActorPath(m.Address) / "user" / "handshake").Tell(_hello);
    }

    private void OnHello(Hello peer)
    {
        string? reason = peer.ProtocolVersion != _hello.ProtocolVersion
            ? $"protocol version {peer.ProtocolVersion}, this node speaks {_hello.ProtocolVersion}"
            : peer.MaxFrameSize != _hello.MaxFrameSize
                ? $"akka.remote.dot-netty.tcp.maximum-frame-size {peer.MaxFrameSize} bytes, this node uses {_hello.MaxFrameSize}"
                : null;
        if (reason is null) return;
        var address = Sender.Path.Address;
        var peerMember = _cluster.State.Members.FirstOrDefault(m => m.Address.Equals(address));
        if (peerMember is null)
        {
            // Not a member (a client, a stranger): it cannot be refused from the cluster, and must never make this node leave.
            _log.Warning("ignoring a handshake from {0} ({1}), which is not a member of this cluster: {2}", peer.NodeName, address, reason);
            return;
        }
        var self = _cluster.SelfMember;
        bool peerIsNewer = self.IsOlderThan(peerMember);
        if (peerIsNewer)
        {
            _log.Error("refusing node {0} ({1}): {2}; it is removed from the cluster", peer.NodeName, address, reason);
            _cluster.Down(address);
        }
        else
        {
            _log.Error("this node ({0}) is refused by the cluster: node {1} ({2}) has {3}; leaving", _hello.NodeName, peer.NodeName, address, reason);
            _cluster.Down(_cluster.SelfAddress);
        }
    }
}
