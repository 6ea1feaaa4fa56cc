using Akka.Configuration;
using ShardPipe.Checkpoints;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Settings;

/// <summary>The shard reader's socket side channel for bulk weights (<c>shardpipe.bulk-transfer</c>).</summary>
public sealed record BulkSettings
{
    public bool Enabled { get; init; } = true;
    /// <summary>Address the listener binds to, and the one offered to workers (the remoting public hostname by default).</summary>
    public string BindHost { get; init; } = "127.0.0.1";
    public string AdvertisedHost { get; init; } = "127.0.0.1";
    public int Port { get; init; }
    public int ChunkBytes { get; init; } = 1 << 20;
    public int Window { get; init; } = 8;
    /// <summary>Smaller tensors go as actor messages (a socket per tensor is not worth it).</summary>
    public long MinBytes { get; init; } = 256 << 10;

    public static BulkSettings From(Config config)
    {
        var b = config.GetConfig("shardpipe.bulk-transfer");
        var (bind, advertised) = SideChannelHosts(config, b);
        if (b is null) return new BulkSettings { BindHost = bind, AdvertisedHost = advertised };
        long chunk = b.GetByteSize("chunk-size") ?? (1 << 20);
        if (chunk < 4096 || chunk > 64 << 20) throw new ConfigurationException($"shardpipe.bulk-transfer.chunk-size must be between 4 KiB and 64 MiB, not {chunk}");
        return new BulkSettings
        {
            Enabled = b.GetBoolean("enabled", true),
            BindHost = bind,
            AdvertisedHost = advertised,
            Port = b.GetInt("port", 0),
            ChunkBytes = (int)chunk,
            Window = Math.Clamp(b.GetInt("window", 8), 1, 256),
            MinBytes = b.GetByteSize("min-size") ?? (256 << 10),
        };
    }

    /// <summary>
    /// A side channel's listen address (its <c>hostname</c>, else the remoting hostname) and the address offered to
    /// peers (its <c>public-hostname</c>, else the remoting public-hostname, else the listen address — the machine's
    /// name when that is 0.0.0.0).
    /// </summary>
    internal static (string Bind, string Advertised) SideChannelHosts(Config config, Config? section)
    {
        string remoteHost = config.GetString("akka.remote.dot-netty.tcp.hostname", "127.0.0.1");
        string publicHost = config.GetString("akka.remote.dot-netty.tcp.public-hostname", "");
        string bind = section?.GetString("hostname", "") is { Length: > 0 } h ? h : remoteHost;
        string advertised = section?.GetString("public-hostname", "") is { Length: > 0 } ph ? ph
            : publicHost.Length > 0 ? publicHost : bind is "0.0.0.0" or "" ? System.Net.Dns.GetHostName() : bind;
        return (bind, advertised);
    }
}
