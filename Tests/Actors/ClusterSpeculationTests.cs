using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Speculative decoding on a real 3-node cluster: each step carries the last token and its ngram drafts k + 1
/// positions wide through every stage, the head verifies them, and the stages roll their caches back to the
/// accepted positions from the next step's mask. Greedy requests get the plain run's tokens — alone, merged with
/// others, prefilled in chunks, and through a worker crash; sampled ones reproduce with their seed.
/// </summary>
[Collection("cluster")]
public class ClusterSpeculationTests
{
    private static readonly SamplingSettings Greedy = new(true, 0, 0, 1, 0);

    // Repetitive prompts: prompt lookup finds something to propose, right or wrong.
    private static long[] Prompt(int length, int seed) => Enumerable.Range(0, length).Select(i => (long)((i % (3 + seed % 4)) * 31 + seed * 17 + 4) % 200).ToArray();

    private static Generate Request(long[] prompt, int maxNew, SpeculationSettings? spec, SamplingSettings? sampling = null, int chunk = 0) =>
        new(Guid.NewGuid().ToString("N"), new[] { prompt }, null, maxNew, true, sampling ?? Greedy, PrefillChunk: chunk, Speculate: spec);

    [Theory]
    [InlineData("llama_untied")]
    [InlineData("qwen2")]
    public async Task Greedy_tokens_with_ngram_speculation_equal_the_plain_run_alone_and_merged(string model)
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model(model)), TimeSpan.FromMinutes(1));
        Assert.Equal(3, loaded.Stages.Select(s => s.Device).Distinct().Count());
        var spec = new SpeculationSettings("ngram", 4);
        var prompts = Enumerable.Range(0, 6).Select(i => Prompt(8 + 3 * i, i)).ToList();
        int[] lengths = { 30, 24, 40, 17, 33, 28 };
        var plain = new List<long[]>();
        for (int i = 0; i < prompts.Count; i++)
            plain.Add((await cluster.Client.RunAsync(Request(prompts[i], lengths[i], null), loaded.Stages, TimeSpan.FromSeconds(60))).NewTokens[0]);

        // Alone, each k: the plain tokens, in fewer steps than tokens when drafts were accepted.
        foreach (int k in new[] { 1, 4 })
        {
            var outcome = await cluster.Client.RunAsync(Request(prompts[0], lengths[0], spec with { Tokens = k }), loaded.Stages, TimeSpan.FromSeconds(60));
            Assert.Equal(plain[0], outcome.NewTokens[0]);
            Assert.Equal(lengths[0], outcome.Steps);
            Assert.True(outcome.Proposed > 0, "prompt lookup proposed drafts");
            Assert.InRange(outcome.Accepted, 0, outcome.Proposed);
        }
        // In one process: the same tokens again.
        var local = SpeculativeGenerator.Generate(PreTrainedModel.FromPretrained(TestPaths.Model(model)), prompts[2], null,
            new GenerationOptions { MaxNewTokens = lengths[2], IgnoreEos = true }, 4).Result.Sequences[0];
        Assert.Equal(plain[2], local.Skip(prompts[2].Length).ToArray());

        // Merged: speculative and plain requests (one prefilled in chunks) running together, arriving spread out.
        foreach (var node in cluster.Nodes) NodeDiagnostics.For(node.System).StepRows.Drain();
        foreach (var node in cluster.Nodes) FaultHooks.For(node.System).BeforeStep = () => Thread.Sleep(2);
        var runs = prompts.Select(async (p, i) =>
        {
            await Task.Delay(i * 10);
            var r = Request(p, lengths[i], i % 3 == 2 ? null : spec, chunk: i == 4 ? 5 : 0);
            return (await cluster.Client.RunAsync(r, loaded.Stages, TimeSpan.FromSeconds(60))).NewTokens[0];
        }).ToList();
        var merged = await Task.WhenAll(runs);
        foreach (var node in cluster.Nodes) FaultHooks.For(node.System).BeforeStep = null;
        for (int i = 0; i < prompts.Count; i++)
            Assert.True(plain[i].SequenceEqual(merged[i]), $"request {i}: plain {string.Join(",", plain[i])}; merged {string.Join(",", merged[i])}");
        var rows = cluster.Nodes.SelectMany(n => NodeDiagnostics.For(n.System).StepRows.Drain()).ToList();
        Assert.True(rows.Max() >= 3, $"the stages merged the requests' steps: at most {rows.Max()} rows in a step");
    }

    [Fact]
    public async Task A_sampled_request_with_speculation_reproduces_with_its_seed_and_a_crash_resumes_with_the_fault_free_tokens()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(1));
        Assert.Contains(loaded.DeviceMap, e => e.Device.StartsWith("node-2/"));
        var spec = new SpeculationSettings("ngram", 4);
        var prompt = Prompt(12, 1);
        var sampled = new SamplingSettings(false, 0.7, 20, 1, 4242);
        var a = await cluster.Client.RunAsync(Request(prompt, 40, spec, sampled), loaded.Stages, TimeSpan.FromSeconds(60));
        var b = await cluster.Client.RunAsync(Request(prompt, 40, spec, sampled), loaded.Stages, TimeSpan.FromSeconds(60));
        var other = await cluster.Client.RunAsync(Request(prompt, 40, spec, sampled with { Seed = 4243 }), loaded.Stages, TimeSpan.FromSeconds(60));
        Assert.Equal(a.NewTokens, b.NewTokens);
        Assert.NotEqual(a.NewTokens, other.NewTokens);
        Assert.Equal(40, a.Steps);
        var greedy = await cluster.Client.RunAsync(Request(prompt, 40, spec), loaded.Stages, TimeSpan.FromSeconds(60));

        // A worker crash mid-way through each: the resumed request carries only accepted tokens and ends as the fault-free run.
        await SpeculativeCrash.ResumesWithFaultFreeTokens(cluster, loaded.Stages, Request(prompt, 40, spec), greedy.NewTokens, Request(prompt, 40, spec, sampled), a.NewTokens);
    }

    [Fact]
    public async Task Speculation_settings_that_cannot_run_are_refused_as_invalid_input()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_tied")), TimeSpan.FromMinutes(1));
        var twoRows = new Generate("two", new[] { new long[] { 1, 2 }, new long[] { 3, 4 } }, null, 5, true, Greedy, Speculate: new SpeculationSettings("ngram", 4));
        var ex = await Assert.ThrowsAsync<InvalidInputException>(() => cluster.Client.RunAsync(twoRows, loaded.Stages, TimeSpan.FromSeconds(30)));
        Assert.Contains("one row", ex.Message);
        await Assert.ThrowsAsync<InvalidInputException>(() => cluster.Client.RunAsync(Request(new long[] { 1, 2 }, 5, new SpeculationSettings("ngram", 0)), loaded.Stages, TimeSpan.FromSeconds(30)));
        var draft = await Assert.ThrowsAsync<InvalidInputException>(() => cluster.Client.RunAsync(Request(new long[] { 1, 2 }, 5, new SpeculationSettings("draft", 4)), loaded.Stages, TimeSpan.FromSeconds(30)));
        Assert.Contains("needs a draft model", draft.Message);
    }
}
