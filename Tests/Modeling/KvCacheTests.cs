using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>The KV cache's buffers: appends past their capacity keep every position, and a rollback forgets what came after its mark.</summary>
public class KvCacheTests
{
    [Fact]
    public void Appends_past_the_capacity_keep_every_position_in_order()
    {
        using var scope = NewDisposeScope();
        using var cache = new KvCache();
        var all = new List<Tensor>();
        foreach (int t in new[] { 5, 1, 1, 70, 1, 200, 3 }) // past 64, then past 128 and 256 in one go
        {
            var k = randn(2, 3, t, 4);
            all.Add(k);
            var (kk, vv) = cache.Update(0, k, k * 2);
            Assert.Equal(cat(all.ToArray(), 2).shape, kk.shape);
            Assert.True(kk.eq(cat(all.ToArray(), 2)).all().item<bool>());
            Assert.True(vv.eq(cat(all.ToArray(), 2) * 2).all().item<bool>());
        }
        Assert.Equal(281, cache.SeenTokens(0));
        Assert.Equal(0, cache.SeenTokens(1));
        Assert.True(cache.Bytes >= 2 * 2 * 3 * 281 * 4 * 4L);
    }

    [Fact]
    public void A_cache_rolls_back_to_its_mark()
    {
        using var scope = NewDisposeScope();
        using var cache = new KvCache();
        cache.Update(0, ones(1, 2, 3, 4), ones(1, 2, 3, 4));
        var mark = cache.Mark();
        cache.Update(0, zeros(1, 2, 1, 4), zeros(1, 2, 1, 4));
        cache.Update(1, zeros(1, 2, 4, 4), zeros(1, 2, 4, 4));
        Assert.Equal(4, cache.SeenTokens(0));
        cache.Rollback(mark);
        Assert.Equal(3, cache.SeenTokens(0));
        Assert.Equal(0, cache.SeenTokens(1));
        var (k, _) = cache.Update(0, full(1, 2, 1, 4, 7f), full(1, 2, 1, 4, 7f));
        Assert.Equal(new float[] { 1, 1, 1, 7 }, k[0, 0, .., 0].data<float>().ToArray());
    }
}
