using System.Collections.Concurrent;
using System.Diagnostics;
using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// 16 prompts arriving together on a real 3-node cluster (every step slowed by 100 ms, so that the stages' order is
/// visible): one stream opens first and starts at once, 15 arrive during its prefill. The first stage prefills them in
/// two steps (three at worst) — the first one, then the others together, while the first one's prefill goes on at the
/// next stages rather than after its round trip — the groups come back together as one 16-row decode step, and every
/// request gets exactly its tokens run alone.
/// </summary>
[Collection("cluster")]
public class ClusterArrivingPromptsTests
{
    private static long[] Prompt(int length, int seed) => Enumerable.Range(0, length).Select(i => (long)((i * 29 + seed * 13 + 5) % 200)).ToArray();

    [Fact]
    public async Task Prompts_arriving_together_prefill_in_two_first_stage_steps_and_decode_as_one()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB",
            extraConfig: _ => "shardpipe.batching.hold-limit = 2s"); // groups slowed this much are still waited for
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(1));
        var greedy = new SamplingSettings(true, 0, 0, 1, 0);
        var requests = Enumerable.Range(0, 16).Select(i => new Generate(Guid.NewGuid().ToString("N"), new[] { Prompt(8 + i, i) }, null, 3, true, greedy)).ToList();
        var alone = new List<long[][]>();
        foreach (var r in requests)
            alone.Add((await cluster.Client.RunAsync(r with { RequestId = Guid.NewGuid().ToString("N") }, loaded.Stages, TimeSpan.FromSeconds(60))).NewTokens);

        var starts = cluster.Nodes.ToDictionary(n => n, _ => new ConcurrentQueue<long>());
        foreach (var node in cluster.Nodes)
        {
            NodeDiagnostics.For(node.System).StepRows.Drain();
            var mine = starts[node];
            FaultHooks.For(node.System).BeforeStep = () => { mine.Enqueue(Stopwatch.GetTimestamp()); Thread.Sleep(100); };
        }
        List<long[][]> together;
        try
        {
            // One stream opens first and starts at once; the other 15 arrive while its prefill runs.
            var firstRun = cluster.Client.RunAsync(requests[0], loaded.Stages, TimeSpan.FromSeconds(60));
            await Task.Delay(20);
            var rest = requests.Skip(1).Select(r => cluster.Client.RunAsync(r, loaded.Stages, TimeSpan.FromSeconds(60))).ToList();
            together = (await Task.WhenAll(rest.Prepend(firstRun))).Select(o => o.NewTokens).ToList();
        }
        finally
        {
            foreach (var node in cluster.Nodes) FaultHooks.For(node.System).BeforeStep = null;
        }
        for (int i = 0; i < requests.Count; i++)
            Assert.True(alone[i].Zip(together[i]).All(p => p.First.SequenceEqual(p.Second)), $"request {i}: not the tokens it gets alone");

        // The first stage is the node that stepped first; the last stage the node whose first step came last.
        var byFirst = cluster.Nodes.OrderBy(n => starts[n].First()).ToList();
        var first = byFirst[0];
        var last = byFirst[^1];
        var firstStarts = starts[first].ToList();
        var rows = NodeDiagnostics.For(first.System).StepRows.Drain();
        // The prompts' steps: those until all 16 were prefilled; the first stream's ran alone (nothing held it back).
        int prefills = 0;
        for (double sum = 0; sum < 16 && prefills < rows.Count; prefills++) sum += rows[prefills];
        Assert.Equal(16.0, rows.Take(prefills).Sum());
        Assert.True(prefills is 2 or 3, $"the first stage prefilled the 16 prompts in {prefills} steps ({string.Join(", ", rows)} rows)");
        Assert.True(firstStarts[1] < starts[last].First(),
            "the later prompts' prefill started while the first one's was still at the next stages");
        Assert.True(rows.Count > prefills && rows[prefills] == 16, $"the groups came back as one decode step of 16 rows ({string.Join(", ", rows)})");
    }
}
