using Akka.Configuration;

namespace ShardPipe.Actors.Settings;

/// <summary>A cluster client's settings (<c>shardpipe.client</c>; defaults in reference.conf).</summary>
public sealed record ClientSettings(string Hostname, int MaxRecoveries, TimeSpan RecoveryTimeout, TimeSpan StatusPollInterval, TimeSpan ProbeTimeout, TimeSpan ProbeRetry)
{
    public static ClientSettings From(Config config)
    {
        var c = ReferenceConfig.Over(config).GetConfig("shardpipe.client");
        int max = c.GetInt("max-recoveries");
        if (max < 0) throw new ConfigurationException($"shardpipe.client.max-recoveries must be at least 0, not {max}");
        return new ClientSettings(c.GetString("hostname"), max, c.GetTimeSpan("recovery-timeout"), c.GetTimeSpan("status-poll-interval"),
            c.GetTimeSpan("probe-timeout"), c.GetTimeSpan("probe-retry"));
    }
}
