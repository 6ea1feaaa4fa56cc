using System.Text.Json.Nodes;
using ShardPipe.Modeling.Generation;

namespace ShardPipe.Tests.Modeling;

/// <summary>HF's per-step rules, shared by the single-process loop, the stages and the coordinator.</summary>
public class DecodeRuleTests
{
    [Fact]
    public void Generate_positions_follow_the_mask_and_forward_positions_do_not()
    {
        var mask = new[] { new long[] { 0, 0, 1, 1 }, new long[] { 1, 1, 1, 1 } };
        Assert.Equal(new[] { new long[] { 1, 1, 0, 1 }, new long[] { 0, 1, 2, 3 } }, DecodeRule.PositionsFromMask(mask));
        Assert.Equal(new[] { new long[] { 0, 1, 2, 3 }, new long[] { 0, 1, 2, 3 } }, DecodeRule.ForwardPositions(mask));
        var (grown, next) = DecodeRule.Advance(mask);
        Assert.Equal(new[] { new long[] { 0, 0, 1, 1, 1 }, new long[] { 1, 1, 1, 1, 1 } }, grown);
        Assert.Equal(new[] { new long[] { 2 }, new long[] { 4 } }, next);
    }

    [Fact]
    public void Settling_a_step_pads_finished_rows_and_finishes_rows_at_eos()
    {
        var stop = new StopTokens(new long[] { 7, 9 }, 0);
        var next = new long[] { 7, 5, 3 };
        var finished = DecodeRule.Settle(next, new[] { false, false, true }, stop, ignoreEos: false);
        Assert.Equal(new long[] { 7, 5, 0 }, next);
        Assert.Equal(new[] { true, false, true }, finished);
        Assert.Equal(new[] { false, false, true }, DecodeRule.Settle(new long[] { 9, 1, 1 }, new[] { false, false, true }, stop, ignoreEos: true));
        Assert.True(DecodeRule.Done(3, 3, new[] { false }));
        Assert.True(DecodeRule.Done(1, 3, new[] { true, true }));
        Assert.False(DecodeRule.Done(1, 3, new[] { true, false }));
    }

    [Fact]
    public void Stop_tokens_come_from_generation_config_with_pad_falling_back_to_eos()
    {
        var one = StopTokens.From(new JsonObject { ["eos_token_id"] = 2 });
        Assert.Equal(new long[] { 2 }, one.Eos);
        Assert.Equal(2, one.Pad);
        var many = StopTokens.From(new JsonObject { ["eos_token_id"] = new JsonArray(5, 6), ["pad_token_id"] = 0 });
        Assert.Equal(new long[] { 5, 6 }, many.Eos);
        Assert.Equal(0, many.Pad);
        var given = StopTokens.From(new JsonObject { ["eos_token_id"] = 2 }, new long[] { 9 }, 1);
        Assert.Equal(new long[] { 9 }, given.Eos);
        Assert.Equal(1, given.Pad);
        var none = StopTokens.From(new JsonObject());
        Assert.Empty(none.Eos);
        Assert.Equal(0, none.Pad);
    }

    [Theory]
    [InlineData("{\"eos_token_id\": \"2\"}", "eos_token_id")]
    [InlineData("{\"eos_token_id\": [1, \"x\"]}", "eos_token_id")]
    [InlineData("{\"eos_token_id\": 2, \"pad_token_id\": -1}", "pad_token_id")]
    [InlineData("{\"eos_token_id\": 2.5}", "eos_token_id")]
    public void Malformed_stop_tokens_are_a_typed_error_naming_the_field(string json, string field)
    {
        var ex = Assert.Throws<InvalidInputException>(() => StopTokens.From((JsonObject)JsonNode.Parse(json)!));
        Assert.Contains($"generation_config.json: {field}", ex.Message);
    }
}
