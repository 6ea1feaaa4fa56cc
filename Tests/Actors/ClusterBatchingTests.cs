using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Continuous batching on a real 3-node cluster: concurrent requests — arriving at different times, of different
/// lengths, greedy and sampled, one prefilled in chunks, one of two padded rows, one cancelled half-way — run merged at
/// every stage, and each gets exactly the tokens it gets alone.
/// </summary>
[Collection("cluster")]
public class ClusterBatchingTests
{
    private static long[] Prompt(int length, int seed) => Enumerable.Range(0, length).Select(i => (long)((i * 31 + seed * 17 + 4) % 200)).ToArray();

    private static Generate Request(long[][] ids, int maxNew, SamplingSettings? sampling = null, long[][]? mask = null, int chunk = 0) =>
        new(Guid.NewGuid().ToString("N"), ids, mask, maxNew, true, sampling ?? new SamplingSettings(true, 0, 0, 1, 0), PrefillChunk: chunk);

    [Theory]
    [InlineData(1)]
    [InlineData(3)] // a group per stage, as on separate machines
    public async Task Concurrent_requests_run_merged_and_each_gets_its_tokens_run_alone(int microBatches)
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB",
            extraConfig: _ => $"shardpipe.batching.micro-batches = {microBatches}");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_tied")), TimeSpan.FromMinutes(1));
        var requests = new List<Generate>();
        for (int i = 0; i < 8; i++) requests.Add(Request(new[] { Prompt(3 + i * 2, i) }, 6 + i * 3));
        requests.Add(Request(new[] { Prompt(9, 20) }, 12, new SamplingSettings(false, 0.9, 30, 0.95, 4242)));
        requests.Add(Request(new[] { Prompt(37, 21) }, 10, chunk: 8));
        requests.Add(Request(new[] { Prompt(5, 22), new long[] { 0, 0, 0 }.Concat(Prompt(2, 23)).ToArray() }, 9,
            mask: new[] { new long[] { 1, 1, 1, 1, 1 }, new long[] { 0, 0, 0, 1, 1 } }));

        var alone = new List<long[][]>();
        foreach (var r in requests)
            alone.Add((await cluster.Client.RunAsync(r with { RequestId = Guid.NewGuid().ToString("N") }, loaded.Stages, TimeSpan.FromSeconds(60))).NewTokens);
        // The chunked prefill gives the whole prompt's tokens.
        var whole = await cluster.Client.RunAsync(requests[9] with { RequestId = "whole", PrefillChunk = 0 }, loaded.Stages, TimeSpan.FromSeconds(60));
        Assert.Equal(whole.NewTokens[0], alone[9][0]);

        foreach (var node in cluster.Nodes) NodeDiagnostics.For(node.System).StepRows.Drain();
        // Every step sleeps a little, so that the requests overlap however fast the machine is.
        foreach (var node in cluster.Nodes) FaultHooks.For(node.System).BeforeStep = () => Thread.Sleep(2);
        using var cancel = new CancellationTokenSource();
        var victim = Request(new[] { Prompt(6, 30) }, 200);
        int victimTokens = 0;
        var victimRun = cluster.Client.RunAsync(victim, loaded.Stages, TimeSpan.FromSeconds(60),
            _ => { if (Interlocked.Increment(ref victimTokens) == 5) cancel.Cancel(); }, cancel.Token);
        var runs = requests.Select(async (r, i) =>
        {
            await Task.Delay(i * 10); // arrivals spread out: each joins the running batch between steps
            return (await cluster.Client.RunAsync(r, loaded.Stages, TimeSpan.FromSeconds(60))).NewTokens;
        }).ToList();
        var merged = await Task.WhenAll(runs);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => victimRun);
        foreach (var node in cluster.Nodes) FaultHooks.For(node.System).BeforeStep = null;

        for (int i = 0; i < requests.Count; i++)
            Assert.True(alone[i].Zip(merged[i]).All(p => p.First.SequenceEqual(p.Second)),
                $"request {i}: alone {string.Join(" | ", alone[i].Select(r => string.Join(",", r)))}; merged {string.Join(" | ", merged[i].Select(r => string.Join(",", r)))}");
        var rows = cluster.Nodes.SelectMany(n => NodeDiagnostics.For(n.System).StepRows.Drain()).ToList();
        Assert.True(rows.Max() >= (microBatches == 1 ? 6 : 3), $"the stages merged the requests' steps: at most {rows.Max()} rows in a step");
        Assert.True(victimTokens < 200, "the cancelled request stopped");

        // After all that, the cluster serves the next request as before.
        Assert.Equal(alone[0][0], (await cluster.Client.RunAsync(requests[0] with { RequestId = "after" }, loaded.Stages, TimeSpan.FromSeconds(60))).NewTokens[0]);
    }
}
