using ShardPipe.Messages;

namespace ShardPipe.Tests.Messages;

/// <summary>A worker takes a repeated slice as the one it holds only when it is the same plan, not merely the same epoch.</summary>
public class LoadSliceTests
{
    private static LoadSlice Slice(int epoch, string[] modules, params string[] route) => new(epoch, "/m", null, "float32", "{}", modules, 10, null,
        route.Select((w, i) => new PipelineHop(w, i == 0, i, 1, i == route.Length - 1, i == route.Length - 1)).ToArray(), Array.Empty<SliceTensor>());

    [Fact]
    public void A_repeat_off_the_wire_is_the_same_plan()
    {
        var slice = Slice(3, new[] { "model.layers.1", "lm_head" }, "w1", "w2");
        var back = (LoadSlice)MessageCodec.Decode(MessageCodec.Encode(slice), MessageCodec.Manifest(slice));
        Assert.NotSame(slice.ModulePrefixes, back.ModulePrefixes);
        Assert.True(slice.SamePlan(back));
    }

    [Fact]
    public void Another_coordinators_plan_of_the_same_epoch_is_not()
    {
        var held = Slice(3, new[] { "model.layers.1", "lm_head" }, "w1", "w2");
        Assert.False(held.SamePlan(Slice(3, new[] { "model.embed_tokens", "model.layers.1", "lm_head" }, "w1", "w2"))); // more modules here
        Assert.False(held.SamePlan(Slice(3, new[] { "model.layers.1", "lm_head" }, "w2", "w1"))); // another route
        Assert.False(held.SamePlan(Slice(4, new[] { "model.layers.1", "lm_head" }, "w1", "w2")));
        Assert.False(held.SamePlan(held with { DType = "bfloat16" }));
    }
}
