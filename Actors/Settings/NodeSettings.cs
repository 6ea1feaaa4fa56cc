using Akka.Configuration;
using ShardPipe.Checkpoints;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Settings;

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
    /// <summary>Fault-injection hook: the protocol version this node claims in its handshake (tests of refusal).</summary>
    public int? DebugProtocolVersion { get; init; }

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
            DebugProtocolVersion = sp.HasPath("debug.protocol-version") ? sp.GetInt("debug.protocol-version") : null,
        };
    }
}
