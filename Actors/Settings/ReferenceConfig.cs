using Akka.Configuration;

namespace ShardPipe.Actors.Settings;

/// <summary>
/// ShardPipe's <c>reference.conf</c>: the one place every setting's default is written. Every settings type reads
/// its section over this fallback, so a host config names only what it changes.
/// </summary>
public static class ReferenceConfig
{
    public static Config Value { get; } = ConfigurationFactory.FromResource<NodeSettings>("ShardPipe.Actors.reference.conf");

    /// <summary><paramref name="config"/> with the reference defaults under it.</summary>
    public static Config Over(Config config) => ReferenceEquals(config, Value) ? config : config.WithFallback(Value);
}
