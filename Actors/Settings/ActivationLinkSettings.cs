using Akka.Configuration;

namespace ShardPipe.Actors.Settings;

/// <summary>
/// Direct sockets between device workers for activations (<c>shardpipe.activation-link</c>; defaults in
/// reference.conf): a worker's <see cref="Messages.StageInput"/>s to a stage on another node go over one, and over
/// actor messages when it is off, not (yet) up, or broken.
/// </summary>
public sealed record ActivationLinkSettings
{
    /// <summary>Whether the channel is on, where it listens and what it offers peers.</summary>
    public required SideChannelEndpoint Endpoint { get; init; }
    /// <summary>Larger messages (a long prompt's activations) go as chunked actor messages.</summary>
    public required int MaxFrameBytes { get; init; }
    /// <summary>How long a write may block (a peer that stopped reading) before the link counts as broken.</summary>
    public required TimeSpan SendTimeout { get; init; }
    /// <summary>How long one frame may take on the receiving side, from its first byte to its last.</summary>
    public TimeSpan FrameTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Connections at once and the opening's deadline.</summary>
    public SideChannelLimits Limits { get; init; } = SideChannelLimits.Default;
    /// <summary>How long a link's one-time token waits for the peer to connect.</summary>
    public required TimeSpan OfferTimeout { get; init; }

    public static ActivationLinkSettings From(Config config, Security.ClusterTls? tls = null)
    {
        config = ReferenceConfig.Over(config);
        var a = config.GetConfig("shardpipe.activation-link");
        var endpoint = SideChannelEndpoint.From(config, "shardpipe.activation-link", tls);
        long max = a.GetByteSize("max-frame-size") ?? 0;
        if (max < 64 << 10 || max > 1L << 30) throw new ConfigurationException($"shardpipe.activation-link.max-frame-size must be between 64 KiB and 1 GiB, not {max}");
        return new ActivationLinkSettings
        {
            Endpoint = endpoint,
            MaxFrameBytes = (int)max,
            SendTimeout = a.GetTimeSpan("send-timeout"),
            FrameTimeout = a.GetTimeSpan("frame-timeout") is { } ft && ft > TimeSpan.Zero ? ft
                : throw new ConfigurationException("shardpipe.activation-link.frame-timeout must be positive"),
            Limits = SideChannelLimits.From(config, "shardpipe.activation-link"),
            OfferTimeout = a.GetTimeSpan("offer-timeout"),
        };
    }
}
