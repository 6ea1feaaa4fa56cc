using Akka.Actor;
using Akka.Configuration;
using Akka.Event;
using Akka.Remote;

namespace ShardPipe.Actors.Membership;

/// <summary>
/// The cluster's failure detector (Akka's phi accrual detector, unchanged) with one addition: a member the crash probe
/// found gone (<see cref="CrashProbe"/>: its port refuses connects) is unavailable at once. Akka removes a downed
/// member only once it is also unreachable, and the singleton moves only on removal; without this, a crashed
/// coordinator's node would wait out acceptable-heartbeat-pause even after it was downed.
/// </summary>
public sealed class ProbedFailureDetector : FailureDetector
{
    [ThreadStatic] private static bool _creatingGone;
    private readonly PhiAccrualFailureDetector _inner;
    private readonly bool _gone;

    public ProbedFailureDetector(Config config, EventStream eventStream)
    {
        _inner = new PhiAccrualFailureDetector(config, eventStream);
        _gone = _creatingGone;
    }

    public override bool IsAvailable => !_gone && _inner.IsAvailable;
    public override bool IsMonitoring => _gone || _inner.IsMonitoring;
    public override void HeartBeat() { if (!_gone) _inner.HeartBeat(); }

    /// <summary>Replaces the detector of <paramref name="address"/> by one that says it is gone (the registry makes it on this thread).</summary>
    public static void MarkGone(IFailureDetectorRegistry<Address> registry, Address address)
    {
        registry.Remove(address);
        _creatingGone = true;
        try { registry.Heartbeat(address); }
        finally { _creatingGone = false; }
    }
}
