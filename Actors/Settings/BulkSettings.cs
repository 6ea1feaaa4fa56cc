using Akka.Configuration;

namespace ShardPipe.Actors.Settings;

/// <summary>The shard reader's socket side channel for bulk weights (<c>shardpipe.bulk-transfer</c>; defaults in reference.conf).</summary>
public sealed record BulkSettings
{
    /// <summary>Whether the channel is on, where it listens and what it offers peers.</summary>
    public required SideChannelEndpoint Endpoint { get; init; }
    public required int ChunkBytes { get; init; }
    public required int Window { get; init; }
    /// <summary>Smaller tensors go as actor messages (a socket per tensor is not worth it).</summary>
    public required long MinBytes { get; init; }
    /// <summary>Connections at once and the opening's deadline.</summary>
    public SideChannelLimits Limits { get; init; } = SideChannelLimits.Default;
    /// <summary>How long a tensor's one-time token waits for the worker to connect.</summary>
    public required TimeSpan OfferTimeout { get; init; }

    public static BulkSettings From(Config config, Security.ClusterTls? tls = null)
    {
        config = ReferenceConfig.Over(config);
        var b = config.GetConfig("shardpipe.bulk-transfer");
        var endpoint = SideChannelEndpoint.From(config, "shardpipe.bulk-transfer", tls);
        long chunk = b.GetByteSize("chunk-size") ?? 0;
        if (chunk < 4096 || chunk > 64 << 20) throw new ConfigurationException($"shardpipe.bulk-transfer.chunk-size must be between 4 KiB and 64 MiB, not {chunk}");
        int window = b.GetInt("window");
        if (window is < 1 or > 256) throw new ConfigurationException($"shardpipe.bulk-transfer.window must be 1..256, not {window}");
        return new BulkSettings
        {
            Endpoint = endpoint,
            ChunkBytes = (int)chunk,
            Window = window,
            MinBytes = b.GetByteSize("min-size") ?? 0,
            Limits = SideChannelLimits.From(config, "shardpipe.bulk-transfer"),
            OfferTimeout = b.GetTimeSpan("offer-timeout"),
        };
    }
}
