using Akka.Configuration;

namespace ShardPipe.Actors.Settings;

/// <summary>
/// What one side-channel listener (bulk channel, activation links) lets strangers hold before they have shown a
/// token: at most <see cref="MaxConnections"/> connections at once (more are closed on accept), and the whole opening —
/// TLS handshake, hello, token — within <see cref="OpeningTimeout"/> (a deadline, not a per-read limit).
/// Read from the channel's section: <c>max-connections</c>, <c>opening-timeout</c>.
/// </summary>
public sealed record SideChannelLimits(int MaxConnections, TimeSpan OpeningTimeout)
{
    public static readonly SideChannelLimits Default = new(256, TimeSpan.FromSeconds(10));

    public static SideChannelLimits From(Config config, string section)
    {
        var s = config.GetConfig(section);
        int max = s.GetInt("max-connections", Default.MaxConnections);
        if (max is < 1 or > 65536) throw new ConfigurationException($"{section}.max-connections must be 1..65536, not {max}");
        var opening = s.GetTimeSpan("opening-timeout", Default.OpeningTimeout);
        if (opening <= TimeSpan.Zero) throw new ConfigurationException($"{section}.opening-timeout must be positive");
        return new SideChannelLimits(max, opening);
    }
}
