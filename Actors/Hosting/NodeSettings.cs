using Akka.Configuration;
using ShardPipe.Checkpoints;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Hosting;

/// <summary>A node's ShardPipe settings, read from the <c>shardpipe</c> section of its HOCON host config.</summary>
public sealed record NodeSettings
{
    public required string NodeName { get; init; }
    public required IReadOnlyList<string> Roles { get; init; }
    public required IReadOnlyList<(string Device, long Budget)> Devices { get; init; }
    public bool LocalCheckpoints { get; init; } = true;
    public IReadOnlyList<string> ModelRoots { get; init; } = Array.Empty<string>();
    public TimeSpan LoadTimeout { get; init; } = TimeSpan.FromMinutes(10);
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(60);
    public TimeSpan CacheIdleTimeout { get; init; } = TimeSpan.FromSeconds(120);
    public long MaxFrameSize { get; init; }
    public int MaxInFlight { get; init; } = 8;
    /// <summary>libtorch intra-op threads for this node's process; 0 = libtorch's default (all cores).</summary>
    public int ComputeThreads { get; init; }
    /// <summary>CPU cores the threads that run this node's steps are pinned to; empty = wherever the OS puts them.</summary>
    public IReadOnlyList<int> ComputeCores { get; init; } = Array.Empty<int>();
    public int MaxQueued { get; init; } = 64;
    public BulkSettings Bulk { get; init; } = new();
    public ActivationLinkSettings Links { get; init; } = new();
    public TimeSpan DebugLoadDelay { get; init; }
    /// <summary>Fault-injection hook: the protocol version this node claims in its handshake (tests of refusal).</summary>
    public int? DebugProtocolVersion { get; init; }
    public TimeSpan DebugStageDelay { get; init; }

    public bool IsCoordinator => Roles.Contains("coordinator");
    public bool IsWorker => Roles.Contains("worker");

    /// <summary>Whether this node may read <paramref name="modelFolder"/> from its own disk.</summary>
    public bool HasLocal(string modelFolder) =>
        LocalCheckpoints && Directory.Exists(modelFolder) &&
        (ModelRoots.Count == 0 || ModelRoots.Any(r => Path.GetFullPath(modelFolder).StartsWith(Path.GetFullPath(r), StringComparison.Ordinal)));

    public static NodeSettings From(Config config, int equalShareOf = 1)
    {
        var sp = config.GetConfig("shardpipe");
        string name = sp.GetString("node-name", "");
        var roles = config.GetStringList("akka.cluster.roles").ToList();
        var devices = new List<(string, long)>();
        foreach (var d in sp.GetValue("devices").GetArray())
        {
            var obj = d.GetObject();
            string device = obj.Items.TryGetValue("device", out var dv) ? dv.GetString() : "cpu";
            string budget = obj.Items.TryGetValue("budget", out var bv) ? bv.GetString() ?? "" : "";
            DeviceId.Parse(device); // validate early, with the device named
            long bytes = budget.Length == 0 ? MaxMemory.DefaultCpuBytes() / Math.Max(1, equalShareOf) : ByteSize.Parse(budget);
            devices.Add((device, bytes));
        }
        return new NodeSettings
        {
            NodeName = name,
            Roles = roles,
            Devices = devices,
            LocalCheckpoints = sp.GetBoolean("local-checkpoints", true),
            ModelRoots = sp.GetStringList("model-roots").ToList(),
            LoadTimeout = sp.GetTimeSpan("load-timeout", TimeSpan.FromMinutes(10)),
            RequestTimeout = sp.GetTimeSpan("request-timeout", TimeSpan.FromSeconds(60)),
            CacheIdleTimeout = sp.GetTimeSpan("cache-idle-timeout", TimeSpan.FromSeconds(120)),
            MaxFrameSize = config.GetByteSize("akka.remote.dot-netty.tcp.maximum-frame-size") ?? 128000,
            MaxInFlight = sp.GetInt("max-in-flight", 8),
            ComputeThreads = sp.GetInt("compute-threads", 0),
            ComputeCores = sp.HasPath("compute-cores") ? sp.GetIntList("compute-cores").ToList() : Array.Empty<int>(),
            MaxQueued = sp.GetInt("max-queued", 64),
            Bulk = BulkSettings.From(config),
            Links = ActivationLinkSettings.From(config),
            DebugLoadDelay = sp.GetTimeSpan("debug.load-delay", TimeSpan.Zero),
            DebugProtocolVersion = sp.HasPath("debug.protocol-version") ? sp.GetInt("debug.protocol-version") : null,
            DebugStageDelay = sp.GetTimeSpan("debug.stage-delay", TimeSpan.Zero),
        };
    }
}

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

/// <summary>
/// Direct sockets between device workers for activations (<c>shardpipe.activation-link</c>): a worker's
/// <see cref="Messages.StageInput"/>s to a stage on another node go over one, and over actor messages when it is
/// off, not (yet) up, or broken.
/// </summary>
public sealed record ActivationLinkSettings
{
    public bool Enabled { get; init; } = true;
    public string BindHost { get; init; } = "127.0.0.1";
    public string AdvertisedHost { get; init; } = "127.0.0.1";
    public int Port { get; init; }
    /// <summary>Larger messages (a long prompt's activations) go as chunked actor messages.</summary>
    public int MaxFrameBytes { get; init; } = 256 << 20;
    /// <summary>How long a write may block (a peer that stopped reading) before the link counts as broken.</summary>
    public TimeSpan SendTimeout { get; init; } = TimeSpan.FromSeconds(5);

    public static ActivationLinkSettings From(Config config)
    {
        var a = config.GetConfig("shardpipe.activation-link");
        var (bind, advertised) = BulkSettings.SideChannelHosts(config, a);
        if (a is null) return new ActivationLinkSettings { BindHost = bind, AdvertisedHost = advertised };
        long max = a.GetByteSize("max-frame-size") ?? (256 << 20);
        if (max < 64 << 10 || max > 1L << 30) throw new ConfigurationException($"shardpipe.activation-link.max-frame-size must be between 64 KiB and 1 GiB, not {max}");
        return new ActivationLinkSettings
        {
            Enabled = a.GetBoolean("enabled", true),
            BindHost = bind,
            AdvertisedHost = advertised,
            Port = a.GetInt("port", 0),
            MaxFrameBytes = (int)max,
            SendTimeout = a.GetTimeSpan("send-timeout", TimeSpan.FromSeconds(5)),
        };
    }
}
