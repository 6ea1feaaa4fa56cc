using ShardPipe.Actors.Coordination;
using ShardPipe.Messages;

namespace ShardPipe.Tests.Actors.Coordination;

/// <summary>A request as the pipeline's first step, without a cluster: validation, masks and positions, resumption, chunks.</summary>
public class FirstStepTests
{
    private static readonly ModelRecord Model = ModelTrackerTests.Model(3, "a") with { Vocab = 32, MaxPositions = 16, EosTokenIds = new long[] { 2 }, PadTokenId = 0 };
    private static readonly SamplingSettings Greedy = new(true, 0, 0, 1, 0);

    private static (StageInput? Step, string? Error) Build(IClientRequest r, int maxNew = 100) => FirstStep.Build(r, Model, "caller", "coordinator", maxNew);

    [Theory]
    [InlineData("", "non-empty rows")]
    [InlineData("1,2;3", "equal length")]
    [InlineData("1,40", "outside the vocabulary")]
    [InlineData("1,-1", "outside the vocabulary")]
    [InlineData("1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1", "at most 16 positions")]
    public void Bad_input_ids_are_refused_with_the_reason(string rows, string expect)
    {
        var ids = rows.Length == 0 ? Array.Empty<long[]>() : rows.Split(';').Select(r => r.Split(',').Select(long.Parse).ToArray()).ToArray();
        var (step, error) = Build(new Forward("f", ids, null, null));
        Assert.Null(step);
        Assert.Contains(expect, error);
    }

    [Fact]
    public void A_generation_whose_prompt_and_max_new_tokens_pass_the_positions_is_refused_before_it_starts()
    {
        var prompt = new[] { new long[] { 5, 6, 7, 8 } };
        Assert.Null(Build(new Generate("g", prompt, null, 12, false, Greedy)).Error); // 4 + 12 = 16 fits
        var (step, error) = Build(new Generate("g", prompt, null, 13, false, Greedy));
        Assert.Null(step);
        Assert.Equal("the prompt has 4 tokens and max_new_tokens asks for 13 more (17); the model takes at most 16 positions", error);
    }

    [Fact]
    public void A_forward_gets_a_full_mask_and_positions_0_to_T_and_the_served_epoch()
    {
        var (step, error) = Build(new Forward("f", new[] { new long[] { 5, 6, 7 } }, null, null));
        Assert.Null(error);
        Assert.Equal(new[] { new long[] { 1, 1, 1 } }, step!.AttentionMask);
        Assert.Equal(new[] { new long[] { 0, 1, 2 } }, step.PositionIds);
        Assert.Equal((3, 0, "caller"), (step.PlanEpoch, step.Hop, step.ReplyTo));
        Assert.Contains("shape of input_ids", Build(new Forward("f", new[] { new long[] { 5, 6 } }, new[] { new long[] { 1, 2 } }, null)).Error);
    }

    [Fact]
    public void A_left_padded_generation_takes_positions_from_its_mask_and_carries_its_stop_tokens()
    {
        var (step, _) = Build(new Generate("g", new[] { new long[] { 0, 5, 6 } }, new[] { new long[] { 0, 1, 1 } }, 4, false, Greedy));
        Assert.Equal(new[] { new long[] { 1, 0, 1 } }, step!.PositionIds);
        Assert.Equal(new long[] { 2 }, step.Generation!.EosTokenIds);
        Assert.Null(step.Generation.Prefill);
    }

    [Fact]
    public void Generation_limits_are_checked()
    {
        Assert.Contains("at least 1", Build(new Generate("g", new[] { new long[] { 5 } }, null, 0, false, Greedy)).Error);
        Assert.Contains("shardpipe.max-new-tokens", Build(new Generate("g", new[] { new long[] { 5 } }, null, 11, false, Greedy), maxNew: 10).Error);
        Assert.Contains("prefill_chunk", Build(new Generate("g", new[] { new long[] { 5 } }, null, 3, false, Greedy) with { PrefillChunk = -1 }).Error);
    }

    [Fact]
    public void A_resumed_generation_prefills_the_tokens_so_far_and_keeps_finished_rows_finished()
    {
        var resume = new[] { new long[] { 7, 2 }, new long[] { 8, 9 } }; // row 1 produced eos (2) at the first step
        var g = new Generate("g", new[] { new long[] { 5 }, new long[] { 6 } }, null, 5, false, Greedy) with { Resume = resume };
        var (step, error) = Build(g);
        Assert.Null(error);
        Assert.Equal(new[] { new long[] { 5, 7, 8 }, new long[] { 6, 2, 9 } }, step!.InputIds);
        Assert.Equal(2, step.Step);
        Assert.Equal(new[] { false, true }, step.Generation!.Finished);
        Assert.Equal(new[] { false, false }, Build(g with { IgnoreEos = true }).Step!.Generation!.Finished);
        Assert.Contains("fewer than max_new_tokens", Build(g with { MaxNewTokens = 2 }).Error);
    }

    [Fact]
    public void A_long_prompt_with_a_prefill_chunk_goes_a_chunk_at_a_time()
    {
        var (step, _) = Build(new Generate("g", new[] { new long[] { 1, 3, 4, 5, 6 } }, null, 2, false, Greedy) with { PrefillChunk = 2 });
        Assert.Equal(new[] { new long[] { 1, 3 } }, step!.InputIds);
        var rest = step.Generation!.Prefill!;
        Assert.Equal(new[] { new long[] { 4, 5, 6 } }, rest.InputIds);
        Assert.Equal(new[] { new long[] { 2, 3, 4 } }, rest.PositionIds);
        Assert.Equal(2, rest.Chunk);
    }
}
