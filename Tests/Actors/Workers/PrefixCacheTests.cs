using Akka.Configuration;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Workers;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Actors.Workers;

/// <summary>The prefix cache's rules alone: the chain hash, longest prefix, pins, least-recently-used eviction under the byte budget.</summary>
public class PrefixCacheTests
{
    private static readonly ulong Id = PrefixCache.Identity(1, 4);

    // A block's keys and values: (1, 1, 4, 2) float32 each = 32 bytes, 64 for both.
    private static (Tensor K, Tensor V) Kv(float x) => (full(new long[] { 1, 1, 4, 2 }, x), full(new long[] { 1, 1, 4, 2 }, -x));

    private static void Add(PrefixCache c, ulong h, float x, long other = 0)
    {
        var (k, v) = Kv(x);
        c.Add(h, 0, k, v, other);
    }

    [Fact]
    public void A_block_hash_names_every_token_up_to_its_end()
    {
        long[] a = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
        long[] b = { 1, 2, 3, 4, 5, 6, 7, 99, 9, 10 };
        var ha = PrefixCache.ChainHashes(a, 4, Id);
        var hb = PrefixCache.ChainHashes(b, 4, Id);
        Assert.Equal(2, ha.Length); // the partial last block has none
        Assert.Equal(ha[0], hb[0]);
        Assert.NotEqual(ha[1], hb[1]);
        // The same block after another prefix is another block.
        long[] c = { 9, 9, 9, 9, 5, 6, 7, 8 };
        Assert.NotEqual(ha[1], PrefixCache.ChainHashes(c, 4, Id)[1]);
        // Another epoch or block size: other hashes for the same tokens.
        Assert.NotEqual(ha[0], PrefixCache.ChainHashes(a, 4, PrefixCache.Identity(2, 4))[0]);
        Assert.NotEqual(ha[0], PrefixCache.ChainHashes(a, 4, PrefixCache.Identity(1, 8))[0]);
        Assert.Equal(ha, PrefixCache.ChainHashes(a, 4, Id));
        Assert.Throws<InvalidInputException>(() => PrefixCache.ChainHashes(a, 0, Id));
    }

    [Fact]
    public void The_longest_prefix_stops_at_the_first_missing_block_or_layer()
    {
        using var c = new PrefixCache(10_000);
        var h = PrefixCache.ChainHashes(Enumerable.Range(0, 16).Select(i => (long)i).ToArray(), 4, Id);
        Add(c, h[0], 1);
        Add(c, h[1], 2);
        Add(c, h[3], 4);
        Assert.Equal(2, c.LongestPrefix(h, new[] { 0 }));
        Assert.Equal(1, c.LongestPrefix(h, new[] { 0 }, max: 1));
        Assert.Equal(0, c.LongestPrefix(h, new[] { 0, 1 })); // layer 1 is not cached
        Assert.Equal(192, c.Bytes);
        Assert.Equal(2f, c.Get(h[1], 0).K[0, 0, 0, 0].item<float>());
        Assert.False(c.Add(h[0], 0, Kv(7).K, Kv(7).V, 0)); // that layer is cached already: kept as it was
        Assert.Equal(1f, c.Get(h[0], 0).K[0, 0, 0, 0].item<float>());
    }

    [Fact]
    public void The_least_recently_used_unpinned_block_goes_first_to_stay_within_the_budget()
    {
        using var c = new PrefixCache(64 * 3);
        Add(c, 1, 1);
        Add(c, 2, 2);
        Add(c, 3, 3);
        c.LongestPrefix(new ulong[] { 1 }, new[] { 0 }); // 1 used again: 2 is now the least recently used
        Add(c, 4, 4);
        Assert.Equal(new[] { true, false, true, true }, new ulong[] { 1, 2, 3, 4 }.Select(h => c.Contains(h, 0)));
        Assert.Equal(1, c.Evictions);

        c.Pin(3);
        c.Pin(3);
        Add(c, 5, 5); // 3 is older than 1 but pinned: 1 goes
        Assert.False(c.Contains(1, 0));
        Assert.True(c.Contains(3, 0));
        Assert.Equal(2, c.RefCount(3));
        Assert.False(c.Evict(3));
        c.Unpin(3);
        Assert.False(c.Evict(3));
        c.Unpin(3);
        Assert.True(c.Evict(3));
        Assert.Equal(128, c.Bytes);
    }

    [Fact]
    public void The_requests_caches_count_against_the_budget_and_a_block_that_cannot_fit_is_not_kept()
    {
        using var c = new PrefixCache(64 * 4);
        Add(c, 1, 1);
        Add(c, 2, 2);
        c.Pin(2);
        // The stage's requests hold 120 bytes: one more block fits beside them and 2 only if unpinned 1 goes.
        Add(c, 3, 3, other: 120);
        Assert.False(c.Contains(1, 0));
        Assert.True(c.Contains(2, 0) && c.Contains(3, 0));
        // Requests grew: unpinned blocks go; pinned ones stay even past the budget.
        Assert.False(c.EvictToFit(250));
        Assert.False(c.Contains(3, 0));
        Assert.True(c.Contains(2, 0));
        var (k, v) = Kv(9);
        Assert.False(c.Add(9, 0, k, v, 250)); // no room: nothing kept
        Assert.False(c.Contains(9, 0));
        Assert.Equal(64, c.Bytes);
        Assert.Throws<InvalidInputException>(() => new PrefixCache(-1));
    }

    [Fact]
    public void The_settings_default_to_on_with_blocks_of_16_and_refuse_what_cannot_be_used()
    {
        var defaults = PrefixCacheSettings.From(ConfigurationFactory.Empty, kvCacheBudget: 0);
        Assert.Equal(new PrefixCacheSettings(true, 16, 1L << 30), defaults);
        Assert.Equal(5_000_000, PrefixCacheSettings.From(ConfigurationFactory.Empty, kvCacheBudget: 5_000_000).MaxBytes); // auto: the KV budget
        var set = PrefixCacheSettings.From(ConfigurationFactory.ParseString("shardpipe.prefix-cache { enabled = off, block-tokens = 32, max-bytes = 2MiB }"), 0);
        Assert.Equal(new PrefixCacheSettings(false, 32, 2L << 20), set);
        Assert.Null(PrefixStage.For(set, 0));
        Assert.Throws<ConfigurationException>(() => PrefixCacheSettings.From(ConfigurationFactory.ParseString("shardpipe.prefix-cache.block-tokens = 0"), 0));
        Assert.Throws<ConfigurationException>(() => PrefixCacheSettings.From(ConfigurationFactory.ParseString("shardpipe.prefix-cache.max-bytes = lots"), 0));
    }
}
