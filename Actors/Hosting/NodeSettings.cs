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
    public int MaxQueued { get; init; } = 64;
    public BulkSettings Bulk { get; init; } = new();
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
            MaxQueued = sp.GetInt("max-queued", 64),
            Bulk = BulkSettings.From(config),
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
        string remoteHost = config.GetString("akka.remote.dot-netty.tcp.hostname", "127.0.0.1");
        string publicHost = config.GetString("akka.remote.dot-netty.tcp.public-hostname", "");
        string bind = b?.GetString("hostname", "") is { Length: > 0 } h ? h : remoteHost;
        string advertised = b?.GetString("public-hostname", "") is { Length: > 0 } ph ? ph
            : publicHost.Length > 0 ? publicHost : bind is "0.0.0.0" or "" ? System.Net.Dns.GetHostName() : bind;
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
}
