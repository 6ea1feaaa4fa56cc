using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Sampled drafts on a real 3-node cluster: the first stage samples a sampled request's drafts from the draft model's
/// distribution q, q travels with the step to the head, and the head's rejection rule decides. A seeded request
/// reproduces, gives the one-process tokens, and with the target as its own draft (q = p) every draft is accepted —
/// which only the min(1, p/q) rule with q delivered does (the point-mass rule would accept about Σ p²).
/// </summary>
[Collection("cluster")]
public class ClusterSampledDraftTests
{
    private static Generate Request(long[] prompt, int maxNew, SpeculationSettings? spec, SamplingSettings sampling) =>
        new(Guid.NewGuid().ToString("N"), new[] { prompt }, null, maxNew, true, sampling, Speculate: spec);

    [Fact]
    public async Task A_seeded_sampled_request_with_sampled_drafts_reproduces_equals_one_process_and_accepts_a_self_draft_fully()
    {
        using var tmp = new TempDir();
        string target = TestPaths.Model("llama_untied");
        string small = DraftFolders.Small(tmp);
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(target), TimeSpan.FromMinutes(1));
        Assert.Equal(3, loaded.Stages.Select(s => s.Device).Distinct().Count());
        var prompt = new long[] { 5, 17, 42, 9, 3, 5, 17, 42, 9, 3, 5, 17 };
        var sampled = new SamplingSettings(false, 0.9, 0, 0.95, 777);
        var spec = new SpeculationSettings("draft", 3, small);

        var a = await cluster.Client.RunAsync(Request(prompt, 30, spec, sampled), loaded.Stages, TimeSpan.FromSeconds(60));
        var b = await cluster.Client.RunAsync(Request(prompt, 30, spec, sampled), loaded.Stages, TimeSpan.FromSeconds(60));
        Assert.Equal(a.NewTokens, b.NewTokens);
        Assert.Equal((a.Proposed, a.Accepted), (b.Proposed, b.Accepted));
        Assert.True(a.Proposed > 0, "the draft model proposed");
        Assert.InRange(a.Accepted, 0, a.Proposed);

        // One process, the same seed and settings: the same tokens and counts.
        var options = new GenerationOptions { MaxNewTokens = 30, IgnoreEos = true, DoSample = true, Temperature = 0.9, TopP = 0.95, Seed = 777 };
        var (local, counts) = SpeculativeGenerator.Generate(PreTrainedModel.FromPretrained(target), prompt, null, options, 3, PreTrainedModel.FromPretrained(small));
        Assert.Equal(a.NewTokens[0], local.Sequences[0].Skip(prompt.Length).ToArray());
        Assert.Equal((counts.Proposed, counts.Accepted), (a.Proposed, a.Accepted));

        // The target as its own draft: q (sampled at the first stage) equals the head's p, so every draft is accepted.
        var self = await cluster.Client.RunAsync(Request(prompt, 30, new SpeculationSettings("draft", 4, target), sampled with { Temperature = 1.0, TopP = 1.0 }), loaded.Stages, TimeSpan.FromSeconds(60));
        Assert.Equal(30, self.Steps);
        Assert.Equal(30 - (1 + (29 + 4) / 5), self.Proposed); // the prompt's step gives one token, then 5 a step
        Assert.Equal(self.Proposed, self.Accepted);
    }
}
