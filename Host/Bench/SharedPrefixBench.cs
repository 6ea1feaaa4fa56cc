using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Actors.Hosting;
using ShardPipe.Host.Cli;
using ShardPipe.Messages;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench serve --shared-prefix N</c>: automatic prefix caching. On <c>embedded:3</c> with the prefix cache
/// on, then again with it off (<c>shardpipe.prefix-cache.enabled = off</c>), the same run: one request with the shared
/// N-token prefix (a system prompt seen before), then <c>--concurrency</c> requests sent together, each the prefix plus a
/// short distinct suffix, greedy, a few new tokens each; time to first token as the client sees it. ttft_ratio = the
/// median with the cache ÷ the median without; prefix_hit_rate = prompt tokens reused ÷ prompt tokens, at the first stage.
/// </summary>
public static class SharedPrefixBench
{
    private const int SuffixTokens = 8, NewTokens = 4;

    public static async Task<int> Run(string folder, int prefix, int concurrency, bool asJson, ILogger log)
    {
        if (prefix < 16) throw new InvalidInputException($"--shared-prefix {prefix}: at least 16 tokens (a cache block)");
        BenchSupport.Say(asJson, $"bench serve --shared-prefix {prefix}: {folder} on embedded:3, {concurrency} requests of the prefix + {SuffixTokens} distinct tokens, {NewTokens} new tokens each, greedy");
        var shared = Enumerable.Range(0, prefix).Select(j => (long)(1000 + j * 7919 % 20000)).ToArray();
        var withCache = await Once(folder, shared, concurrency, cache: true, log);
        BenchSupport.Say(asJson, $"  with the prefix cache: TTFT p50 {withCache.P50:0.0} ms (first request alone {withCache.First:0.0} ms), hit rate {withCache.HitRate:0.000}");
        var without = await Once(folder, shared, concurrency, cache: false, log);
        BenchSupport.Say(asJson, $"  without:               TTFT p50 {without.P50:0.0} ms (first request alone {without.First:0.0} ms)");
        if (!without.Tokens.SequenceEqual(withCache.Tokens)) throw new ShardPipeException("the requests' greedy tokens differ with the prefix cache and without");
        BenchSupport.Say(asJson, $"  ratio {withCache.P50 / without.P50:0.000} (target ≤ 0.2); the same tokens with and without");
        BenchSupport.Finish(new JsonObject
        {
            ["bench"] = "serve",
            ["shared_prefix_tokens"] = prefix,
            ["suffix_tokens"] = SuffixTokens,
            ["concurrency"] = concurrency,
            ["ttft_p50_ms"] = Math.Round(withCache.P50, 2),
            ["ttft_p50_ms_no_cache"] = Math.Round(without.P50, 2),
            ["ttft_ratio"] = Math.Round(withCache.P50 / without.P50, 4),
            ["first_request_ttft_ms"] = Math.Round(withCache.First, 2),
            ["first_request_ttft_ms_no_cache"] = Math.Round(without.First, 2),
            ["prefix_hit_rate"] = Math.Round(withCache.HitRate, 4),
            ["same_tokens"] = true,
        });
        return 0;
    }

    private sealed record Figures(double First, double P50, double HitRate, List<string> Tokens);

    private static async Task<Figures> Once(string folder, long[] shared, int concurrency, bool cache, ILogger log)
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, extraConfig: _ =>
            $"shardpipe.max-in-flight = {Math.Max(32, concurrency + 1)}\nshardpipe.batching.max-rows = {Math.Max(32, concurrency)}\nshardpipe.prefix-cache.enabled = {(cache ? "on" : "off")}");
        await using var session = ClusterSession.Over(cluster);
        await session.EnsureLoadedAsync(new LoadModel(Guid.NewGuid().ToString("N"), folder, null, "float32", "balanced", null, null), log, json: true);
        var client = session.Client;
        var stages = (await client.StatusAsync(TimeSpan.FromSeconds(10))).Stages;
        var greedy = new SamplingSettings(true, 0, 0, 1, 0);
        async Task<(double Ttft, long[] Tokens)> One(long[] ids)
        {
            var sw = Stopwatch.StartNew();
            double first = -1;
            var outcome = await client.RunAsync(new Generate(Guid.NewGuid().ToString("N"), new[] { ids }, null, NewTokens, true, greedy), stages, TimeSpan.FromMinutes(30),
                _ => { if (first < 0) first = sw.Elapsed.TotalMilliseconds; });
            return (first, outcome.NewTokens[0]);
        }
        await One(Enumerable.Range(0, 40).Select(j => (long)(50 + j)).ToArray()); // warm-up, nothing shared
        var (firstTtft, _) = await One(shared.Concat(Enumerable.Range(0, SuffixTokens).Select(j => (long)(300 + j))).ToArray()); // the prefix's first sight
        var runs = await Task.WhenAll(Enumerable.Range(0, concurrency).Select(i =>
            One(shared.Concat(Enumerable.Range(0, SuffixTokens).Select(j => (long)(400 + i * SuffixTokens + j))).ToArray())));
        var ttft = runs.Select(r => r.Ttft).Order().ToList();
        double hitRate = 0;
        if (cache)
        {
            // The stages report their prefix caches with each registration (every register-interval).
            var deadline = Stopwatch.StartNew();
            long planned = 40 + (1 + (long)concurrency) * (shared.Length + SuffixTokens); // the warm-up, the first sight, the others
            while (deadline.Elapsed < TimeSpan.FromSeconds(15))
            {
                var figures = (await client.StatusAsync(TimeSpan.FromSeconds(10))).Timings?.Select(t => t.Timing.PrefixCache).OfType<PrefixCacheFigures>().ToList();
                var first = figures?.MaxBy(p => p.PromptTokens);
                if (first is not null) hitRate = first.HitRate;
                if (first is not null && first.PromptTokens >= planned) break;
                await Task.Delay(250);
            }
        }
        return new Figures(firstTtft, ttft[ttft.Count / 2], hitRate, runs.Select(r => string.Join(",", r.Tokens)).ToList());
    }
}
