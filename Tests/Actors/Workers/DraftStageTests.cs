using ShardPipe.Actors.Workers;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors.Workers;

/// <summary>
/// The first stage's draft proposals: a sampled request's step leaves with its drafts and their q rows
/// (<see cref="GenerationState.DraftProbs"/>), a greedy one's with drafts only; the draft caches count in the stage's
/// KV bytes until the request is released.
/// </summary>
public class DraftStageTests
{
    /// <summary>A step after the request's first token (<paramref name="step"/> 1): the first step carries no drafts (the
    /// prompt runs alone, <c>Speculation.DraftBudget</c>).</summary>
    private static StageInput Step(string id, long[] prompt, SamplingSettings sampling, string draft, int step = 1) =>
        new(id, step, 0, null, new[] { prompt }, new[] { prompt.Select(_ => 1L).ToArray() }, new[] { prompt.Select((_, i) => (long)i).ToArray() }, "path",
            new GenerationState(8, true, Array.Empty<long>(), 0, new[] { false }, sampling, History: new[] { prompt }, Speculate: new SpeculationSettings("draft", 3, draft)), 1, null);

    [Fact]
    public void A_sampled_step_carries_its_drafts_distributions_and_the_draft_caches_count_until_released()
    {
        using var tmp = new TempDir();
        string folder = DraftFolders.Small(tmp, 16, seed: 4, hidden: 16);
        using var stage = new DraftStage(16);
        var prompt = new long[] { 3, 1, 4, 1, 5 };

        var first = stage.Fill(Step("f", prompt, new SamplingSettings(false, 0.9, 0, 1, 8), folder, step: 0));
        Assert.Empty(first.Generation!.Drafts!);
        Assert.Equal(prompt, first.InputIds![0]);
        stage.Release("f");

        var sampled = stage.Fill(Step("s", prompt, new SamplingSettings(false, 0.9, 0, 1, 8), folder));
        Assert.Equal(3, sampled.Generation!.Drafts!.Length);
        Assert.Equal(3 * 16, sampled.Generation.DraftProbs!.Length);
        Assert.Equal(prompt.Concat(sampled.Generation.Drafts), sampled.InputIds![0]);
        for (int j = 0; j < 3; j++) Assert.InRange(sampled.Generation.DraftProbs.Skip(16 * j).Take(16).Sum(), 0.999f, 1.001f);

        var greedy = stage.Fill(Step("g", prompt, new SamplingSettings(true, 0, 0, 1, 0), folder));
        Assert.Equal(3, greedy.Generation!.Drafts!.Length);
        Assert.Null(greedy.Generation.DraftProbs);

        Assert.Equal(2, stage.Active);
        long both = stage.CacheBytes;
        Assert.True(both > 0, "the draft caches hold bytes");
        stage.Release("s");
        Assert.InRange(stage.CacheBytes, 1, both - 1);
        stage.Release("g");
        Assert.Equal(0, stage.CacheBytes);
    }
}
