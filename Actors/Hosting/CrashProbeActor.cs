using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using Akka.Remote;
using ShardPipe.Actors.Membership;

namespace ShardPipe.Actors.Hosting;

/// <summary>
/// On every node (<c>shardpipe.crash-probe</c>): when an association to a member ends or fails, or the member turns
/// unreachable, connects to its remoting port; a member whose port refuses every try is gone and is downed at once
/// when <see cref="CrashProbe.NodeToDown"/> says this node decides. Thin: the rule and the probe are the pure class.
/// </summary>
public sealed class CrashProbeActor : ReceiveActor, IWithTimers
{
    private sealed record Probed(string Address, IReadOnlyList<ProbeResult> Results, bool Second);
    private sealed record ProbeAgain(Address Member);

    public ITimerScheduler Timers { get; set; } = null!;

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly Cluster _cluster = Cluster.Get(Context.System);
    private readonly HashSet<string> _probing = new(StringComparer.Ordinal);
    private readonly HashSet<string> _downed = new(StringComparer.Ordinal);

    public CrashProbeActor()
    {
        Receive<DisassociatedEvent>(e => Suspect(e.RemoteAddress));
        Receive<AssociationErrorEvent>(e => Suspect(e.RemoteAddress));
        Receive<ClusterEvent.UnreachableMember>(u => Suspect(u.Member.Address));
        Receive<ClusterEvent.MemberRemoved>(r => _downed.Remove(r.Member.Address.ToString()));
        Receive<Probed>(OnProbed);
        Receive<ProbeAgain>(a => Suspect(a.Member, second: true));
        ReceiveAny(_ => { }); // other remoting lifecycle and member events
    }

    public static Props Props() => Akka.Actor.Props.Create(() => new CrashProbeActor());

    protected override void PreStart()
    {
        Context.System.EventStream.Subscribe(Self, typeof(DisassociatedEvent));
        Context.System.EventStream.Subscribe(Self, typeof(AssociationErrorEvent));
        _cluster.Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents,
            typeof(ClusterEvent.UnreachableMember), typeof(ClusterEvent.MemberRemoved));
    }

    protected override void PostStop()
    {
        Context.System.EventStream.Unsubscribe(Self);
        _cluster.Unsubscribe(Self);
    }

    /// <summary>Probes the Up member at that host and port (an association's address may differ in protocol), once at a time;
    /// <paramref name="second"/>: the probe again after one that found the port listening (<see cref="CrashProbe.ProbeAgain"/>).</summary>
    private void Suspect(Address? remote, bool second = false)
    {
        if (remote?.Host is not { } host || remote.Port is not { } port) return;
        var member = _cluster.State.Members.FirstOrDefault(m => m.Status == MemberStatus.Up && m.Address.Host == host && m.Address.Port == port);
        if (member is null || member.Address == _cluster.SelfAddress) return;
        string address = member.Address.ToString();
        if (_downed.Contains(address) || !_probing.Add(address)) return;
        CrashProbe.Probe(host, port)
            .PipeTo(Self, success: r => new Probed(address, r, second), failure: _ => new Probed(address, new[] { ProbeResult.Failed }, second));
    }

    private void OnProbed(Probed p)
    {
        _probing.Remove(p.Address);
        string self = _cluster.SelfAddress.ToString();
        if (CrashProbe.ProbeAgain(p.Results, p.Second)) Timers.StartSingleTimer($"again {p.Address}", new ProbeAgain(Address.Parse(p.Address)), CrashProbe.AgainAfter);
        if (CrashProbe.NodeToDown(ClusterView.OldestFirst(Context.System), self, p.Address, p.Results) is not { } node || !_downed.Add(node))
        {
            if (p.Results.All(r => r == ProbeResult.Refused)) _log.Info("crash probe: {0} refuses connects (another node decides, or this side is no majority)", p.Address);
            return;
        }
        _log.Warning("crash probe: {0} refuses connects on its remoting port (its process is gone); this side is a majority: downing it now", node);
        var gone = Address.Parse(node);
        _cluster.Down(gone);
        if (_cluster.FailureDetector is { } detector) ProbedFailureDetector.MarkGone(detector, gone); // unreachable too: Akka removes a downed member only then

    }
}
