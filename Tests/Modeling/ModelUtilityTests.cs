using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>The PreTrainedModel utilities: embeddings, buffers, masks, casts, sharded loads.</summary>
public class ModelUtilityTests
{
    private static readonly long[] Prompt = { 5, 17, 42, 9, 3 };

    private static float[] Last(CausalLMModel m, long vocabPrefix)
    {
        using var scope = NewDisposeScope();
        return m.Forward(tensor(Prompt, new long[] { 1, Prompt.Length }), lastOnly: true)[0, 0].narrow(0, 0, vocabPrefix).data<float>().ToArray();
    }

    [Theory]
    [InlineData("llama_tied")]
    [InlineData("llama_untied")]
    [InlineData("gpt2")]
    public void Resizing_embeddings_keeps_the_tie_the_config_and_the_existing_token_logits(string name)
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model(name));
        long old = model.VocabSize;
        bool tied = ReferenceEquals(model.InputEmbeddings.Weight, model.OutputEmbeddings.Weight);
        var before = Last(model, old);
        model.ResizeTokenEmbeddings(old + 10, padToMultipleOf: 8);
        long expected = (old + 10 + 7) / 8 * 8;
        Assert.Equal(expected, model.VocabSize);
        Assert.Equal(expected, model.Config.GetLong("vocab_size"));
        Assert.Equal(new[] { expected, model.InputEmbeddings.Weight.Shape[1] }, model.InputEmbeddings.Weight.Tensor.shape);
        Assert.Equal(expected, model.OutputEmbeddings.Weight.Tensor.shape[0]);
        Assert.Equal(tied, ReferenceEquals(model.InputEmbeddings.Weight, model.OutputEmbeddings.Weight));
        // The same logits for the old tokens, up to summation order (the head's matmul is blocked by vocabulary size).
        ReferenceModelTests.AssertClose(before.Select(v => (double)v).ToArray(), Last(model, old), 1e-5, "old tokens after growing");
        // New rows start at the mean of the old ones.
        using var w = model.InputEmbeddings.Weight.Tensor;
        var mean = w.narrow(0, 0, old).mean(new long[] { 0 }).data<float>().ToArray();
        Assert.Equal(mean, w[expected - 1].data<float>().ToArray());
        model.ResizeTokenEmbeddings(old - 4);
        ReferenceModelTests.AssertClose(before.Take((int)old - 4).Select(v => (double)v).ToArray(), Last(model, old - 4), 1e-5, "old tokens after shrinking");
    }

    [Fact]
    public void Buffers_parameters_and_decoder_are_reachable_by_name()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("mistral"));
        Assert.Equal(new long[] { 8 }, model.GetParameterOrBuffer("model.layers.0.self_attn.rotary_emb.inv_freq").shape);
        Assert.Equal(6, model.NamedNonPersistentBuffers().Count());
        Assert.Equal("MistralModel", model.GetDecoder().ClassName);
        Assert.Throws<InvalidInputException>(() => model.GetParameterOrBuffer("nope.weight"));
        model.SetAttnImplementation("eager");
        Assert.Equal(AttnImplementation.Eager, model.Attention);
    }

    [Fact]
    public void Extended_and_inverted_masks_hold_zero_or_the_dtype_minimum()
    {
        using var mask = tensor(new long[] { 0, 1, 1 }, new long[] { 1, 3 });
        using var ext = ModelUtilities.GetExtendedAttentionMask(mask, ScalarType.Float32);
        Assert.Equal(new long[] { 1, 1, 3, 3 }, ext.shape);
        Assert.Equal(float.MinValue, ext[0, 0, 2, 0].item<float>()); // padded key
        Assert.Equal(float.MinValue, ext[0, 0, 1, 2].item<float>()); // future key
        Assert.Equal(0f, ext[0, 0, 2, 1].item<float>());
        using var inv = ModelUtilities.InvertAttentionMask(mask, ScalarType.Float32);
        Assert.Equal(new[] { float.MinValue, 0f, 0f }, inv.reshape(-1).data<float>().ToArray());
    }

    [Fact]
    public void Casting_with_a_keep_mask_leaves_the_kept_weights_alone()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"));
        model.CastParameters(DType.F16, keep: k => k.Contains("norm", StringComparison.Ordinal));
        Assert.Equal(ScalarType.Float32, model.GetParameterOrBuffer("model.norm.weight").dtype);
        Assert.Equal(ScalarType.Float16, model.GetParameterOrBuffer("model.layers.0.mlp.up_proj.weight").dtype);
    }

    [Fact]
    public void Load_sharded_checkpoint_fills_a_model_and_reports_keys()
    {
        var fresh = PreTrainedModel.FromPretrained(TestPaths.Model("qwen2"), new FromPretrainedOptions
        {
            StateDict = new Dictionary<string, Tensor>(), // everything newly initialised
        });
        var reference = PreTrainedModel.FromPretrained(TestPaths.Model("qwen2"));
        Assert.NotEqual(Last(reference, 10), Last(fresh, 10));
        var (missing, unexpected) = fresh.LoadShardedCheckpoint(TestPaths.Model("qwen2"));
        Assert.Empty(missing);
        Assert.Empty(unexpected);
        Assert.Equal(Last(reference, 10), Last(fresh, 10));
        Assert.Throws<LoadingException>(() => fresh.LoadShardedCheckpoint(TestPaths.Model("llama_untied")));
    }

    [Fact]
    public void Padding_without_an_attention_mask_warns_once()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"));
        model.Config.Set("pad_token_id", 0);
        using var padded = tensor(new long[] { 0, 0, 5, 6 }, new long[] { 1, 4 });
        Assert.True(model.WarnIfPaddingAndNoAttentionMask(padded, null));
        Assert.False(model.WarnIfPaddingAndNoAttentionMask(padded, null));
    }
}
