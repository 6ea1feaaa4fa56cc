using System.Diagnostics;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Prefix caching on a real 3-node cluster: requests sharing a prefix, one after another and at once (one prefilled in
/// chunks), give one process's greedy tokens while every stage reuses the prefix's blocks (status reports the hit rate
/// and cached bytes); a budget too small for the blocks keeps the outputs right; a node setting turns the cache off.
/// </summary>
[Collection("cluster")]
public class ClusterPrefixCacheTests
{
    private static Generate Request(long[] ids, int maxNew, int chunk = 0) =>
        new(Guid.NewGuid().ToString("N"), new[] { ids }, null, maxNew, false, new SamplingSettings(true, 0, 0, 1, 0), PrefillChunk: chunk);

    private static async Task<PrefixCacheFigures[]> Figures(EmbeddedCluster cluster, Func<PrefixCacheFigures[], bool> until)
    {
        var sw = Stopwatch.StartNew();
        PrefixCacheFigures[] figures;
        do
        {
            var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(10));
            figures = (status.Timings ?? Array.Empty<DeviceTiming>()).Select(t => t.Timing.PrefixCache).OfType<PrefixCacheFigures>().ToArray();
            if (until(figures)) return figures;
            await Task.Delay(200);
        } while (sw.Elapsed < TimeSpan.FromSeconds(15));
        return figures;
    }

    [Theory]
    [InlineData("16", true)]   // a 16-token block, the budget of the node
    [InlineData("4", false)]   // 4-token blocks under a budget that holds about one prompt's blocks: evictions, outputs still right
    public async Task Requests_sharing_a_prefix_give_one_process_tokens_on_three_nodes(string blockTokens, bool roomy)
    {
        string folder = TestPaths.Model("llama_tied");
        var model = PreTrainedModel.FromPretrained(folder);
        var shared = Enumerable.Range(0, 70).Select(i => (long)((i * 31 + 7) % 200)).ToArray();
        var prompts = Enumerable.Range(0, 6).Select(i => shared.Concat(Enumerable.Range(0, 3 + i).Select(j => (long)((j * 13 + i * 5 + 1) % 200))).ToArray()).ToList();
        var local = prompts.Select(p => TokenGenerator.Greedy(model, new[] { p }, null, new GenerationOptions { MaxNewTokens = 8 }).Sequences[0][p.Length..]).ToList();
        model.Release();

        string budget = roomy ? "" : "\nshardpipe.prefix-cache.max-bytes = 30KiB";
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB",
            extraConfig: _ => $"shardpipe.prefix-cache.block-tokens = {blockTokens}{budget}");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(folder), TimeSpan.FromMinutes(1));
        async Task<long[]> Run(int i, int chunk = 0) =>
            (await cluster.Client.RunAsync(Request(prompts[i], 8, chunk), loaded.Stages, TimeSpan.FromSeconds(60))).NewTokens[0];

        // One after another, then the rest at once (one of them prefilled in chunks).
        Assert.Equal(local[0], await Run(0));
        Assert.Equal(local[1], await Run(1));
        var together = await Task.WhenAll(Enumerable.Range(2, 4).Select(i => Run(i, chunk: i == 3 ? 16 : 0)));
        for (int i = 2; i < 6; i++) Assert.Equal(local[i], together[i - 2]);

        long promptTokens = prompts.Sum(p => (long)p.Length);
        // Each worker reports with its registration (every register-interval): wait for the stages with layers, not just the first.
        // A later stage's report may predate its blocks (reports come every register-interval): with room for them, wait
        // until every stage's report shows blocks too (if none ever does, the assertions below fail).
        var figures = await Figures(cluster, f => f.Length >= 2 && f.Max(x => x.PromptTokens) >= promptTokens && (!roomy || f.All(x => x.Blocks > 0)));
        Assert.True(figures.Length >= 2, $"stages with layers report their prefix caches ({figures.Length})");
        var first = figures.MaxBy(f => f.PromptTokens)!;
        Assert.Equal(promptTokens, first.PromptTokens);
        if (roomy)
        {
            // The second request reused the 64-token prefix (4 blocks of 16); of those at once, at least the first reused it too.
            Assert.True(first.ReusedTokens >= 2 * 64, $"reused {first.ReusedTokens} of {first.PromptTokens} prompt tokens");
            Assert.True(first.HitRate > 0.3, $"hit rate {first.HitRate}");
            Assert.All(figures, f => Assert.True(f.CachedBytes > 0 && f.Blocks > 0));
        }
        else Assert.All(figures, f => Assert.True(f.CachedBytes <= 30 * 1024));

        // After all that, the cluster gives the first prompt's tokens again.
        Assert.Equal(local[0], await Run(0));
    }

    [Fact]
    public async Task A_node_setting_turns_the_prefix_cache_off()
    {
        string folder = TestPaths.Model("llama_untied");
        await using var cluster = await EmbeddedCluster.StartAsync(2, "node-1/cpu=1GiB,node-2/cpu=1GiB", extraConfig: _ => "shardpipe.prefix-cache.enabled = off");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(folder), TimeSpan.FromMinutes(1));
        var prompt = Enumerable.Range(0, 40).Select(i => (long)(i % 200)).ToArray();
        var a = (await cluster.Client.RunAsync(Request(prompt, 4), loaded.Stages, TimeSpan.FromSeconds(60))).NewTokens[0];
        var b = (await cluster.Client.RunAsync(Request(prompt, 4), loaded.Stages, TimeSpan.FromSeconds(60))).NewTokens[0];
        Assert.Equal(a, b);
        await Task.Delay(1500); // a registration or more
        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(10));
        Assert.NotEmpty(status.Timings ?? Array.Empty<DeviceTiming>());
        Assert.All(status.Timings!, t => Assert.Null(t.Timing.PrefixCache));
    }
}
