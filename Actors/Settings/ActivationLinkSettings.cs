using Akka.Configuration;
using ShardPipe.Checkpoints;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Settings;


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
