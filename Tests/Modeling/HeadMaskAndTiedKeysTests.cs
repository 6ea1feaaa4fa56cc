using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary><c>get_head_mask</c>, <c>get_expanded_tied_weights_keys</c> and <c>get_encoder</c> of a decoder-only model.</summary>
public class HeadMaskAndTiedKeysTests
{
    [Fact]
    public void A_head_mask_becomes_one_broadcastable_mask_per_layer_at_the_model_dtype()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("gpt2"), new FromPretrainedOptions { DType = "bfloat16" });
        Assert.Equal(new Tensor?[] { null, null, null }, model.GetHeadMask(null, 3));

        using var perHead = tensor(new float[] { 1, 0, 1, 1 });
        var masks = model.GetHeadMask(perHead, 2);
        Assert.Equal(2, masks.Count);
        Assert.All(masks, m => Assert.Equal(new long[] { 1, 4, 1, 1 }, m!.shape));
        Assert.All(masks, m => Assert.Equal(ScalarType.BFloat16, m!.dtype));
        Assert.Equal(new float[] { 1, 0, 1, 1 }, masks[1]!.to(ScalarType.Float32).flatten().data<float>().ToArray());

        using var perLayer = tensor(new float[] { 1, 1, 0, 1, 0, 0, 1, 1 }, new long[] { 2, 4 });
        var layered = model.GetHeadMask(perLayer, 2, isAttentionChunked: true);
        Assert.Equal(new long[] { 1, 4, 1, 1, 1 }, layered[0]!.shape);
        Assert.Equal(new float[] { 0, 0, 1, 1 }, layered[1]!.to(ScalarType.Float32).flatten().data<float>().ToArray());

        using var bad = ones(2, 2, 2);
        Assert.Throws<InvalidInputException>(() => model.GetHeadMask(bad, 2));
    }

    [Theory]
    [InlineData("gpt2", "lm_head.weight", "transformer.wte.weight")]
    [InlineData("llama_tied", "lm_head.weight", "model.embed_tokens.weight")]
    [InlineData("llama_untied", null, null)]
    public void Expanded_tied_weights_keys_name_each_tied_target_and_its_source(string name, string? target, string? source)
    {
        var meta = AutoModel.FromConfig(ShardPipe.Checkpoints.PretrainedConfig.FromFolder(TestPaths.Model(name)));
        var tied = meta.GetExpandedTiedWeightsKeys();
        if (target is null) Assert.Empty(tied);
        else Assert.Equal(new Dictionary<string, string> { [target] = source! }, tied);
        Assert.Same(meta, meta.GetEncoder());
    }
}
