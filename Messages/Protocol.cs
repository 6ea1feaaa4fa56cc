namespace ShardPipe.Messages;

/// <summary>Marker for every message that may cross a node boundary; the one serializer is bound to it.</summary>
public interface IShardPipeMessage { }

/// <summary>
/// A fact about one plan epoch (a slice loaded, failed, progressing…): the coordinator drops, in one place, every such
/// fact whose epoch is not the plan it is waiting for.
/// </summary>
public interface IPlanEpochFact
{
    int PlanEpoch { get; }
}

/// <summary>Wire protocol constants. Keys are append-only; a breaking change bumps <see cref="Version"/>.</summary>
public static class Protocol
{
    public const int Version = 6;
    // 6, appended without a bump (an older peer ignores the keys and drops the message, losing only what they add):
    // RegisterWorker.Served and SeenEpoch (session 25), RegisterWorker.Drained and NodeDrained (session 26: an older
    // worker does not report that its node is being drained, so a coordinator that takes over mid-drain forgets it).
    // 6: ClusterStatus.State is a ClusterState (an integer, was a string); ModelRecord.Request may be absent.
    // 5: continuous batching (StageBatch between stages) and chunked prefill (PromptRest): an older stage would drop them.
    // 4: registrations repeat and report the slice held (coordinator moves); ModelCommitted; resumable requests.
    // 2: bulk-channel chunks carry an XXH3-64 trailer (was CRC-32); activation links.

    /// <summary>Largest payload we put in one actor message: under Akka.Remote's frame size and off the large-object heap (85 KB).</summary>
    public const int MaxChunkBytes = 64 * 1024;
}
