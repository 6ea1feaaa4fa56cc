using Akka.Actor;
using Akka.Event;
using Akka.Remote;
using ShardPipe.Actors.Membership;

namespace ShardPipe.Actors.Client;

/// <summary>
/// A client's way into the cluster without joining it: it finds a live node among the contact points (each node
/// runs a proxy to the coordinator singleton at <c>/user/coordinator-proxy</c>), forwards every message there with
/// its original sender (answers come straight back to the asker), watches that node, and moves to the next contact
/// point when it dies. Messages that arrive while no contact is live wait (in order) until one is.
/// </summary>
public sealed class CoordinatorContact : ReceiveActor, IWithStash, IWithTimers
{
    public IStash Stash { get; set; } = null!;
    public ITimerScheduler Timers { get; set; } = null!;

    private sealed record TryNext;
    private sealed record ContactProbed(Address Node, IReadOnlyList<ProbeResult> Results);

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly IReadOnlyList<Address> _contacts;
    private readonly TimeSpan _probeTimeout, _probeRetry;
    private int _next;
    private long _probe;

    public CoordinatorContact(IReadOnlyList<Address> contacts, TimeSpan probeTimeout, TimeSpan probeRetry)
    {
        if (contacts.Count == 0) throw new InvalidInputException("a cluster client needs at least one contact point (HOST:PORT)");
        _contacts = contacts;
        (_probeTimeout, _probeRetry) = (probeTimeout, probeRetry);
        Searching();
    }

    /// <param name="probeTimeout">A contact point silent this long is passed over for the next (<c>shardpipe.client.probe-timeout</c>).</param>
    /// <param name="probeRetry">One that answers without a coordinator yet is asked again after this (<c>probe-retry</c>).</param>
    public static Props Props(IReadOnlyList<Address> contacts, TimeSpan probeTimeout, TimeSpan probeRetry) =>
        Akka.Actor.Props.Create(() => new CoordinatorContact(contacts, probeTimeout, probeRetry));

    public static ActorPath ProxyPath(Address node) => new RootActorPath(node) / "user" / "coordinator-proxy";

    protected override void PreStart()
    {
        // An association to the contact point that ends or fails: its port is probed (CrashProbe); a port that refuses
        // every connect means the node's process is gone, so the next contact point is tried now, not after the watch's
        // failure detector gives up (seconds later).
        Context.System.EventStream.Subscribe(Self, typeof(DisassociatedEvent));
        Context.System.EventStream.Subscribe(Self, typeof(AssociationErrorEvent));
        Self.Tell(new TryNext());
    }

    protected override void PostStop() => Context.System.EventStream.Unsubscribe(Self);

    private void Searching()
    {
        Receive<TryNext>(_ =>
        {
            var contact = _contacts[_next++ % _contacts.Count];
            Context.ActorSelection(ProxyPath(contact)).Tell(new Identify(++_probe));
            Timers.StartSingleTimer("probe", new TryNext(), _probeTimeout); // no answer: the next one
        });
        Receive<ActorIdentity>(id =>
        {
            if (!Equals(id.MessageId, _probe)) return; // an answer to an earlier probe
            if (id.Subject is null)
            {
                Timers.StartSingleTimer("probe", new TryNext(), _probeRetry);
                return;
            }
            Timers.Cancel("probe");
            Context.Watch(id.Subject);
            _log.Info("reached the cluster through {0}", id.Subject.Path.Address);
            Become(() => Connected(id.Subject));
            Stash.UnstashAll();
        });
        Receive<DisassociatedEvent>(_ => { });
        Receive<AssociationErrorEvent>(_ => { });
        Receive<ContactProbed>(_ => { });
        ReceiveAny(_ => Stash.Stash());
    }

    private void Connected(IActorRef proxy)
    {
        Receive<Terminated>(t =>
        {
            if (!t.ActorRef.Equals(proxy)) return;
            _log.Warning("contact point {0} was lost; trying the others", proxy.Path.Address);
            Become(Searching);
            Self.Tell(new TryNext());
        });
        Receive<TryNext>(_ => { });
        Receive<ActorIdentity>(_ => { });
        bool probing = false;
        void Suspect(Address? remote)
        {
            var node = proxy.Path.Address;
            if (probing || remote?.Host != node.Host || remote?.Port != node.Port || node.Host is null || node.Port is not { } port) return;
            probing = true;
            CrashProbe.Probe(node.Host, port)
                .PipeTo(Self, success: r => new ContactProbed(node, r), failure: _ => new ContactProbed(node, new[] { ProbeResult.Failed }));
        }
        Receive<DisassociatedEvent>(e => Suspect(e.RemoteAddress));
        Receive<AssociationErrorEvent>(e => Suspect(e.RemoteAddress));
        Receive<ContactProbed>(p =>
        {
            probing = false;
            if (!p.Node.Equals(proxy.Path.Address) || p.Results.Any(r => r != ProbeResult.Refused)) return;
            _log.Warning("contact point {0} refuses connects (its process is gone); trying the others", p.Node);
            Context.Unwatch(proxy);
            Become(Searching);
            Self.Tell(new TryNext());
        });
        ReceiveAny(m => proxy.Forward(m));
    }
}
