using Akka.Configuration;

namespace ShardPipe.Actors.Settings;

/// <summary>
/// Whether the coordinator rebalances the served model by itself when a node joins (<c>shardpipe.placement.rebalance =
/// auto</c>), and the least relief of the busiest device (<c>rebalance-min-gain</c>, a fraction) worth a move.
/// </summary>
public sealed record RebalanceSettings(bool Auto, double MinGain)
{
    /// <summary>For settings built without a config (tests): no automatic rebalance.</summary>
    public static readonly RebalanceSettings Off = new(false, 1);

    public static RebalanceSettings From(Config config)
    {
        var p = ReferenceConfig.Over(config).GetConfig("shardpipe.placement");
        string mode = p.GetString("rebalance");
        bool auto = mode switch
        {
            "auto" => true,
            "off" => false,
            _ => throw new ConfigurationException($"shardpipe.placement.rebalance: '{mode}' is not off or auto"),
        };
        double gain = p.GetDouble("rebalance-min-gain");
        if (double.IsNaN(gain) || gain is < 0 or >= 1)
            throw new ConfigurationException($"shardpipe.placement.rebalance-min-gain must be a fraction in [0, 1), not {gain}");
        return new RebalanceSettings(auto, gain);
    }
}
