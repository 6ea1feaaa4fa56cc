using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Speculative decoding with a draft model on a real 3-node cluster: the first stage proposes each step's drafts with
/// the draft model (its cache kept per request there), the head verifies them. Greedy requests get the plain run's
/// tokens — with a small generated draft, with the target as its own draft (every draft accepted), merged with plain
/// requests, and through a worker crash; sampled ones reproduce with their seed; a draft of another vocabulary fails
/// the request with a typed error.
/// </summary>
[Collection("cluster")]
public class ClusterDraftSpeculationTests
{
    private static readonly SamplingSettings Greedy = new(true, 0, 0, 1, 0);

    private static long[] Prompt(int length, int seed) => Enumerable.Range(0, length).Select(i => (long)((i * 37 + seed * 11 + i * i) % 250) + 3).ToArray();

    private static Generate Request(long[] prompt, int maxNew, SpeculationSettings? spec, SamplingSettings? sampling = null, int chunk = 0) =>
        new(Guid.NewGuid().ToString("N"), new[] { prompt }, null, maxNew, true, sampling ?? Greedy, PrefillChunk: chunk, Speculate: spec);

    [Fact]
    public async Task Greedy_tokens_with_a_draft_model_equal_the_plain_run_alone_merged_and_in_one_process()
    {
        using var tmp = new TempDir();
        string target = TestPaths.Model("llama_untied");
        string small = DraftFolders.Small(tmp);
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(target), TimeSpan.FromMinutes(1));
        Assert.Equal(3, loaded.Stages.Select(s => s.Device).Distinct().Count());
        var spec = new SpeculationSettings("draft", 4, small);
        var prompts = Enumerable.Range(0, 4).Select(i => Prompt(6 + 5 * i, i)).ToList();
        int[] lengths = { 30, 21, 36, 25 };
        var plain = new List<long[]>();
        for (int i = 0; i < prompts.Count; i++)
            plain.Add((await cluster.Client.RunAsync(Request(prompts[i], lengths[i], null), loaded.Stages, TimeSpan.FromSeconds(60))).NewTokens[0]);

        foreach (int k in new[] { 1, 4 })
        {
            var outcome = await cluster.Client.RunAsync(Request(prompts[0], lengths[0], spec with { Tokens = k }), loaded.Stages, TimeSpan.FromSeconds(60));
            Assert.Equal(plain[0], outcome.NewTokens[0]);
            Assert.Equal(lengths[0], outcome.Steps);
            Assert.True(outcome.Proposed > 0, "the draft model proposed");
            Assert.InRange(outcome.Accepted, 0, outcome.Proposed);
        }
        // The target as its own draft: every draft accepted, k + 1 tokens a step.
        var self = await cluster.Client.RunAsync(Request(prompts[2], lengths[2], new SpeculationSettings("draft", 4, target)), loaded.Stages, TimeSpan.FromSeconds(60));
        Assert.Equal(plain[2], self.NewTokens[0]);
        Assert.Equal(self.Proposed, self.Accepted);
        Assert.Equal(lengths[2] - (lengths[2] + 4) / 5, self.Proposed);

        // In one process: the same tokens and counts as the cluster's.
        var (local, counts) = SpeculativeGenerator.Generate(PreTrainedModel.FromPretrained(target), prompts[0], null,
            new GenerationOptions { MaxNewTokens = lengths[0], IgnoreEos = true }, 4, PreTrainedModel.FromPretrained(small));
        Assert.Equal(plain[0], local.Sequences[0].Skip(prompts[0].Length).ToArray());
        Assert.True(counts.Proposed > 0);

        // Merged with plain requests (one speculative request prefilled in chunks), arriving spread out.
        foreach (var node in cluster.Nodes) NodeDiagnostics.For(node.System).StepRows.Drain();
        foreach (var node in cluster.Nodes) FaultHooks.For(node.System).BeforeStep = () => Thread.Sleep(2);
        var runs = prompts.Select(async (p, i) =>
        {
            await Task.Delay(i * 10);
            var r = Request(p, lengths[i], i == 1 ? null : spec, chunk: i == 3 ? 7 : 0);
            return (await cluster.Client.RunAsync(r, loaded.Stages, TimeSpan.FromSeconds(60))).NewTokens[0];
        }).ToList();
        var merged = await Task.WhenAll(runs);
        foreach (var node in cluster.Nodes) FaultHooks.For(node.System).BeforeStep = null;
        for (int i = 0; i < prompts.Count; i++)
            Assert.True(plain[i].SequenceEqual(merged[i]), $"request {i}: plain {string.Join(",", plain[i])}; merged {string.Join(",", merged[i])}");
        var rows = cluster.Nodes.SelectMany(n => NodeDiagnostics.For(n.System).StepRows.Drain()).ToList();
        Assert.True(rows.Max() >= 2, $"the stages merged the requests' steps: at most {rows.Max()} rows in a step");
    }

    [Fact]
    public async Task A_sampled_request_with_a_draft_model_reproduces_and_a_crash_resumes_with_the_fault_free_tokens()
    {
        using var tmp = new TempDir();
        string small = DraftFolders.Small(tmp);
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(1));
        Assert.Contains(loaded.DeviceMap, e => e.Device.StartsWith("node-2/"));
        var spec = new SpeculationSettings("draft", 4, small);
        var prompt = Prompt(12, 1);
        var sampled = new SamplingSettings(false, 0.7, 20, 1, 4242);
        var a = await cluster.Client.RunAsync(Request(prompt, 40, spec, sampled), loaded.Stages, TimeSpan.FromSeconds(60));
        var b = await cluster.Client.RunAsync(Request(prompt, 40, spec, sampled), loaded.Stages, TimeSpan.FromSeconds(60));
        var other = await cluster.Client.RunAsync(Request(prompt, 40, spec, sampled with { Seed = 4243 }), loaded.Stages, TimeSpan.FromSeconds(60));
        Assert.Equal(a.NewTokens, b.NewTokens);
        Assert.NotEqual(a.NewTokens, other.NewTokens);
        Assert.True(a.Proposed > 0);
        var greedy = await cluster.Client.RunAsync(Request(prompt, 40, spec), loaded.Stages, TimeSpan.FromSeconds(60));
        var plain = await cluster.Client.RunAsync(Request(prompt, 40, null), loaded.Stages, TimeSpan.FromSeconds(60));
        Assert.Equal(plain.NewTokens, greedy.NewTokens);

        // A worker crash mid-way through each: the resumed request carries only accepted tokens and ends as the fault-free run.
        await SpeculativeCrash.ResumesWithFaultFreeTokens(cluster, loaded.Stages, Request(prompt, 40, spec), greedy.NewTokens, Request(prompt, 40, spec, sampled), a.NewTokens);
    }

    [Fact]
    public async Task A_draft_model_that_cannot_run_fails_the_request_with_a_typed_error()
    {
        using var tmp = new TempDir();
        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(1));
        var none = await Assert.ThrowsAsync<InvalidInputException>(() => cluster.Client.RunAsync(Request(new long[] { 1, 2 }, 5, new SpeculationSettings("draft", 4)), loaded.Stages, TimeSpan.FromSeconds(30)));
        Assert.Contains("needs a draft model", none.Message);
        var wide = await Assert.ThrowsAnyAsync<ShardPipeException>(() => cluster.Client.RunAsync(Request(new long[] { 1, 2 }, 5, new SpeculationSettings("draft", 4, DraftFolders.Small(tmp, 300))), loaded.Stages, TimeSpan.FromSeconds(30)));
        Assert.Contains("vocab_size 300", wide.Message);
        var missing = await Assert.ThrowsAnyAsync<ShardPipeException>(() => cluster.Client.RunAsync(Request(new long[] { 1, 2 }, 5, new SpeculationSettings("draft", 4, tmp.File("absent"))), loaded.Stages, TimeSpan.FromSeconds(30)));
        Assert.Contains("absent", missing.Message);
        // The stage runs on: a plain request after them is served.
        var after = await cluster.Client.RunAsync(Request(new long[] { 1, 2 }, 5, null), loaded.Stages, TimeSpan.FromSeconds(30));
        Assert.Equal(5, after.Steps);
    }
}
