using Akka.Configuration;
using ShardPipe.Checkpoints;

namespace ShardPipe.Actors.Settings;

/// <summary>Automatic prefix caching at each stage (<c>shardpipe.prefix-cache</c>; defaults in reference.conf).</summary>
/// <param name="Enabled">Whether the stages keep and reuse prompt blocks.</param>
/// <param name="BlockTokens">Prompt tokens per cached block (only full blocks are kept).</param>
/// <param name="MaxBytes">The most bytes a stage's cached blocks and its requests' KV caches hold together (<c>max-bytes</c>;
/// auto = the node's <c>kv-cache-budget</c> when set, else 1 GiB).</param>
public sealed record PrefixCacheSettings(bool Enabled, int BlockTokens, long MaxBytes)
{
    public static readonly PrefixCacheSettings Off = new(false, 16, 0);

    public static PrefixCacheSettings From(Config config, long kvCacheBudget)
    {
        var p = ReferenceConfig.Over(config).GetConfig("shardpipe.prefix-cache");
        int block = p.GetInt("block-tokens");
        if (block < 1 || block > 4096) throw new ConfigurationException($"shardpipe.prefix-cache.block-tokens must be 1..4096, not {block}");
        string max = p.GetString("max-bytes", "auto");
        long bytes = max is "auto" or "" ? (kvCacheBudget > 0 ? kvCacheBudget : 1L << 30)
            : ByteSize.TryParse(max, out long b) && b > 0 ? b
            : throw new ConfigurationException($"shardpipe.prefix-cache.max-bytes: '{max}' is not auto or a size such as 2GiB");
        return new PrefixCacheSettings(p.GetBoolean("enabled"), block, bytes);
    }
}
