using Akka.Configuration;

namespace ShardPipe.Actors.Settings;

/// <summary>How a stage merges the steps waiting for it (<c>shardpipe.batching</c>; defaults in reference.conf).</summary>
/// <param name="MaxRows">The most rows (sequences) in one merged step.</param>
/// <param name="MaxTokens">The most positions in one merged step (a prefill chunk counts its length); a single step over it runs alone.</param>
/// <param name="MicroBatches">Groups of requests circulating at once: a new request waits at the first stage for one
/// to come back and joins it, unless fewer than this many are out.</param>
/// <param name="HoldLimit">The longest a new request waits at the first stage for a group to come back.</param>
public sealed record BatchingSettings(int MaxRows, int MaxTokens, int MicroBatches, TimeSpan HoldLimit)
{
    public static BatchingSettings From(Config config)
    {
        var b = ReferenceConfig.Over(config).GetConfig("shardpipe.batching");
        int AtLeast1(string key) => b.GetInt(key) is var v && v >= 1 ? v : throw new ConfigurationException($"shardpipe.batching.{key} must be at least 1, not {v}");
        var hold = b.GetTimeSpan("hold-limit");
        if (hold < TimeSpan.Zero) throw new ConfigurationException($"shardpipe.batching.hold-limit must not be negative, not {hold}");
        return new BatchingSettings(AtLeast1("max-rows"), AtLeast1("max-tokens"), AtLeast1("micro-batches"), hold);
    }
}
