using Akka.Actor;

namespace ShardPipe.Actors.Diagnostics;

/// <summary>
/// One node's counters and sample logs (bytes over the bulk channel, frames over activation links, step and hop
/// times), held per ActorSystem so that several nodes in one process — an embedded cluster, a test beside another
/// — each count only their own traffic. Read by tests and benchmarks; nothing in the data path depends on it.
/// </summary>
public sealed class NodeDiagnostics : IExtension
{
    private long _bulkBytesReceived, _linkFramesSent, _linkFramesReceived, _linksUp, _refusedFromWire;

    /// <summary>This node's diagnostics (created on first use).</summary>
    public static NodeDiagnostics For(ActorSystem system) => system.WithExtension<NodeDiagnostics, NodeDiagnosticsProvider>();

    /// <summary>Tensor bytes this node received over the bulk side channel.</summary>
    public long BulkBytesReceived => Interlocked.Read(ref _bulkBytesReceived);
    /// <summary>Frames this node's workers sent over activation links.</summary>
    public long LinkFramesSent => Interlocked.Read(ref _linkFramesSent);
    /// <summary>Frames this node's activation listener received.</summary>
    public long LinkFramesReceived => Interlocked.Read(ref _linkFramesReceived);

    /// <summary>Activation links this node's workers have brought up (ever; a link that fails is not subtracted).</summary>
    public long LinksUp => Interlocked.Read(ref _linksUp);

    /// <summary>Messages from the wire that this node's serializers refused before building them (typed by name, PoisonPill, Kill).</summary>
    public long RefusedFromWire => Interlocked.Read(ref _refusedFromWire);

    /// <summary>Milliseconds spent computing each step on this node.</summary>
    public SampleLog<double> StepTimes { get; } = new();
    /// <summary>Rows (sequences of all the requests merged) in each step on this node.</summary>
    public SampleLog<double> StepRows { get; } = new();
    /// <summary>
    /// Milliseconds from a peer writing an activation frame to this node reading it (the frame's send time on the
    /// sender's monotonic clock): meaningful when both nodes share a machine, as in the decode benchmark.
    /// </summary>
    public SampleLog<double> HopLatency { get; } = new();

    public void AddBulkBytes(long bytes) => Interlocked.Add(ref _bulkBytesReceived, bytes);
    public void FrameSent() => Interlocked.Increment(ref _linkFramesSent);
    /// <summary>A frame counted as sent turned out not to have left (its write failed): it goes as actor messages.</summary>
    public void FrameNotSent() => Interlocked.Decrement(ref _linkFramesSent);
    public void FrameReceived() => Interlocked.Increment(ref _linkFramesReceived);
    public void LinkUp() => Interlocked.Increment(ref _linksUp);

    /// <summary>The port this node's activation-link listener took (0 while there is none).</summary>
    public int LinkListenerPort { get; set; }

    private long _refusedByIntake;
    /// <summary>Messages this node's workers refused or dropped by intake (a stranger's step, chunk or link request).</summary>
    public long RefusedByIntake => Interlocked.Read(ref _refusedByIntake);
    public void RefuseByIntake() => Interlocked.Increment(ref _refusedByIntake);
    public void Refused() => Interlocked.Increment(ref _refusedFromWire);
}

public sealed class NodeDiagnosticsProvider : ExtensionIdProvider<NodeDiagnostics>
{
    public override NodeDiagnostics CreateExtension(ExtendedActorSystem system) => new();
}
