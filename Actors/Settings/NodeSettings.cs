using Akka.Configuration;
using ShardPipe.Checkpoints;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Settings;

/// <summary>
/// A node's ShardPipe settings, read from the <c>shardpipe</c> section of its HOCON host config over reference.conf,
/// where every default is written (and only there).
/// </summary>
public sealed record NodeSettings
{
    public required string NodeName { get; init; }
    public required IReadOnlyList<string> Roles { get; init; }
    public required IReadOnlyList<(string Device, long Budget)> Devices { get; init; }
    /// <summary>Where this node's disk device writes weights it must convert; null = none (weights read from the checkpoint).</summary>
    public string? OffloadFolder { get; init; }
    public required bool LocalCheckpoints { get; init; }
    public required IReadOnlyList<string> ModelRoots { get; init; }
    public required TimeSpan LoadTimeout { get; init; }
    public required TimeSpan RequestTimeout { get; init; }
    public required TimeSpan CacheIdleTimeout { get; init; }
    /// <summary>How often a worker frees idle caches (<c>cache-sweep-interval</c>).</summary>
    public required TimeSpan CacheSweepInterval { get; init; }
    /// <summary>The most KV-cache bytes any device of the served model may hold for admitted requests (<c>kv-cache-budget</c>; 0 = auto: what its budget leaves after the weights).</summary>
    public long KvCacheBudget { get; init; }
    /// <summary>How often a device worker repeats its registration (what it holds included).</summary>
    public required TimeSpan RegisterInterval { get; init; }
    /// <summary>A <c>shardpipe node</c> process whose node the cluster downed starts a fresh node (rejoining) instead of exiting.</summary>
    public required bool RestartWhenDowned { get; init; }
    /// <summary>How long a new coordinator waits, at most, for every worker node to report what it holds.</summary>
    public required TimeSpan StartWindow { get; init; }
    public required long MaxFrameSize { get; init; }
    public required int MaxInFlight { get; init; }
    public required int MaxQueued { get; init; }
    /// <summary>The most new tokens a request may ask for (never below the loaded model's positions).</summary>
    public required int MaxNewTokens { get; init; }
    /// <summary>libtorch intra-op threads for this node's process; 0 = libtorch's default (all cores).</summary>
    public required int ComputeThreads { get; init; }
    /// <summary>CPU cores the threads that run this node's steps are pinned to; empty = wherever the OS puts them.</summary>
    public required IReadOnlyList<int> ComputeCores { get; init; }
    /// <summary><c>compute-share</c>: each step's libtorch threads from the process's cores shared among the stages computing at once (<see cref="Workers.CoreArbiter"/>); off = the process-wide setting.</summary>
    public bool ComputeShare { get; init; } = true;
    /// <summary><c>placement.balance</c>: <c>speed</c> (a strategy weighs devices by budget × measured speed) or <c>bytes</c> (budgets alone).</summary>
    public string PlacementBalance { get; init; } = "speed";
    /// <summary>Benchmark hook (<c>debug.compute-slowdown</c>, unset in production): this node's steps and speed calibration take this many times their compute time (a slower machine, simulated).</summary>
    public double DebugComputeSlowdown { get; init; } = 1;
    public required BulkSettings Bulk { get; init; }
    public required ActivationLinkSettings Links { get; init; }
    public required BatchingSettings Batching { get; init; }
    /// <summary>Rebalancing the served model by itself when a node joins (<c>shardpipe.placement</c>).</summary>
    public RebalanceSettings Rebalance { get; init; } = RebalanceSettings.Off;
    /// <summary>Automatic prefix caching at this node's stages (<c>shardpipe.prefix-cache</c>).</summary>
    public PrefixCacheSettings PrefixCache { get; init; } = PrefixCacheSettings.Off;
    /// <summary>Fault-injection hook: the protocol version this node claims in its handshake (tests of refusal).</summary>
    public int? DebugProtocolVersion { get; init; }
    /// <summary>Fault-injection hook: every step on this node sleeps this long first (multi-process tests of faults mid-generation).</summary>

    public bool IsCoordinator => Roles.Contains(Membership.Roles.Coordinator);
    public bool IsWorker => Roles.Contains(Membership.Roles.Worker);

    /// <summary>Whether this node may read <paramref name="modelFolder"/> from its own disk.</summary>
    public bool HasLocal(string modelFolder) =>
        LocalCheckpoints && Directory.Exists(modelFolder) &&
        (ModelRoots.Count == 0 || ModelRoots.Any(r => PathRules.IsUnder(modelFolder, r)));

    /// <param name="equalShareOf">Devices with no budget get this share of the machine's available memory.</param>
    /// <summary>A node's settings; its TLS (<c>shardpipe.tls</c>) loaded here, once, for the side channels.</summary>
    public static NodeSettings From(Config config, int equalShareOf = 1) => From(config, Security.ClusterTls.From(config), equalShareOf);

    /// <summary>A node's settings, with the <paramref name="tls"/> the node already loaded for Akka.Remote (one load of the certificate per node).</summary>
    public static NodeSettings From(Config config, Security.ClusterTls? tls, int equalShareOf = 1)
    {
        config = ReferenceConfig.Over(config);
        var sp = config.GetConfig("shardpipe");
        var devices = new List<(string, long)>();
        string? folder = sp.GetString("offload-folder") is { Length: > 0 } of ? of : null;
        foreach (var d in sp.GetValue("devices").GetArray())
        {
            var obj = d.GetObject();
            string device = obj.Items.TryGetValue("device", out var dv) ? dv.GetString() : "cpu";
            string budget = obj.Items.TryGetValue("budget", out var bv) ? bv.GetString() ?? "" : "";
            DeviceId.Parse(device); // validate early, with the device named
            if (obj.Items.TryGetValue("folder", out var fv) && fv.GetString() is { Length: > 0 } f) folder = f;
            long bytes = budget.Length == 0 ? MaxMemory.DefaultCpuBytes() / Math.Max(1, equalShareOf) : ByteSize.Parse(budget);
            devices.Add((device, bytes));
        }
        int AtLeast(string key, int min)
        {
            int v = sp.GetInt(key);
            return v >= min ? v : throw new ConfigurationException($"shardpipe.{key} must be at least {min}, not {v}");
        }
        return new NodeSettings
        {
            NodeName = sp.GetString("node-name"),
            Roles = config.GetStringList("akka.cluster.roles").ToList(),
            Devices = devices,
            OffloadFolder = folder,
            LocalCheckpoints = sp.GetBoolean("local-checkpoints"),
            ModelRoots = sp.GetStringList("model-roots").ToList(),
            LoadTimeout = sp.GetTimeSpan("load-timeout"),
            RequestTimeout = sp.GetTimeSpan("request-timeout"),
            CacheIdleTimeout = sp.GetTimeSpan("cache-idle-timeout"),
            CacheSweepInterval = sp.GetTimeSpan("cache-sweep-interval"),
            RegisterInterval = sp.GetTimeSpan("register-interval"),
            StartWindow = sp.GetTimeSpan("start-window"),
            RestartWhenDowned = sp.GetBoolean("restart-when-downed"),
            MaxFrameSize = config.GetByteSize("akka.remote.dot-netty.tcp.maximum-frame-size") ?? 0,
            MaxInFlight = AtLeast("max-in-flight", 1),
            KvCacheBudget = sp.GetString("kv-cache-budget", "auto") is "auto" or "" ? 0
                : ByteSize.TryParse(sp.GetString("kv-cache-budget"), out long kvb) && kvb > 0 ? kvb
                : throw new ConfigurationException($"shardpipe.kv-cache-budget: '{sp.GetString("kv-cache-budget")}' is not auto or a size such as 2GiB"),
            MaxQueued = AtLeast("max-queued", 0),
            MaxNewTokens = AtLeast("max-new-tokens", 1),
            ComputeThreads = sp.GetInt("compute-threads"),
            ComputeCores = sp.GetIntList("compute-cores").ToList(),
            ComputeShare = sp.GetBoolean("compute-share"),
            PlacementBalance = sp.GetString("placement.balance") is "speed" or "bytes" ? sp.GetString("placement.balance")
                : throw new ConfigurationException($"shardpipe.placement.balance: '{sp.GetString("placement.balance")}' is not speed or bytes"),
            DebugComputeSlowdown = !sp.HasPath("debug.compute-slowdown") ? 1
                : sp.GetDouble("debug.compute-slowdown") is var slow && double.IsFinite(slow) && slow >= 1 ? slow
                : throw new ConfigurationException($"shardpipe.debug.compute-slowdown must be a number of at least 1, not {sp.GetString("debug.compute-slowdown")}"),
            Bulk = BulkSettings.From(config, tls),
            Links = ActivationLinkSettings.From(config, tls),
            Batching = BatchingSettings.From(config),
            Rebalance = RebalanceSettings.From(config),
            DebugProtocolVersion = sp.HasPath("debug.protocol-version") ? sp.GetInt("debug.protocol-version") : null,
        } is var settings ? settings with { PrefixCache = PrefixCacheSettings.From(config, settings.KvCacheBudget) } : null!;
    }
}
