using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Models;

/// <summary>
/// <c>GemmaForCausalLM</c> (transformers 4.38): Llama's attention and gated MLP (shared code) with <c>head_dim</c> apart from
/// hidden/heads, RMSNorm scaled by <c>(1 + weight)</c>, embeddings times <c>sqrt(hidden_size)</c> rounded to the model
/// dtype, the configured activation, and the head tied to the embeddings.
/// </summary>
public static class GemmaFamily
{
    /// <summary>Gemma 4.38 registers no <c>inv_freq</c> buffer and caches no rotary tables.</summary>
    public static readonly LlamaVariant Variant = new("Gemma", QkvBiasAlways: false, UseSlidingWindow: false, CachedRopeTables: false) { InvFreqBuffer = false };

    /// <summary>The Llama-family settings of a Gemma config: <c>hidden_activation</c> (newer configs) before <c>hidden_act</c>.</summary>
    public static LlamaConfig Settings(PretrainedConfig config)
    {
        var c = LlamaConfig.From(config, Variant);
        return c with { HiddenAct = config.GetString("hidden_activation") ?? config.GetString("hidden_act") ?? "gelu_pytorch_tanh" };
    }
}

/// <summary>GemmaRMSNorm: normalised in float32, cast back to the input dtype, times <c>(1 + weight)</c> in the weight's dtype.</summary>
public sealed class GemmaRmsNorm : HfModule
{
    public override string ClassName => "GemmaRMSNorm";
    private readonly double _eps;
    public TensorSlot Weight { get; }

    public GemmaRmsNorm(long dim, double eps)
    {
        _eps = eps;
        Weight = Parameter("weight", dim);
    }

    public Tensor Forward(Tensor x) // (..., H) -> (..., H)
    {
        using var hook = Hook();
        using var scope = NewDisposeScope();
        var h = x.to(ScalarType.Float32);
        using TorchSharp.Scalar eps = _eps, one = 1.0; // Scalars held until the calls return (an implicit conversion's temporary can be finalized mid-call: AttentionMask.Build)
        h = h * rsqrt(h.square().mean(new long[] { -1 }, keepdim: true) + eps);
        return (h.to(x.dtype) * (Weight.Tensor + one)).MoveToOuterDisposeScope();
    }
}

public sealed class GemmaDecoderLayer : HfModule
{
    public override string ClassName => "GemmaDecoderLayer";
    public LlamaAttention SelfAttn { get; }
    private readonly LlamaMlp _mlp;
    private readonly GemmaRmsNorm _inputNorm, _postNorm;

    public GemmaDecoderLayer(LlamaConfig c, int index)
    {
        SelfAttn = Child("self_attn", new LlamaAttention(GemmaFamily.Variant, c, index));
        _mlp = Child("mlp", new LlamaMlp(GemmaFamily.Variant, c));
        _inputNorm = Child("input_layernorm", new GemmaRmsNorm(c.HiddenSize, c.RmsEps));
        _postNorm = Child("post_attention_layernorm", new GemmaRmsNorm(c.HiddenSize, c.RmsEps));
    }

    /// <summary>Flat (N, H) → (N, H): the batch's requests together (<see cref="RaggedBatch"/>).</summary>
    public Tensor Forward(Tensor x, RaggedBatch batch)
    {
        using var hook = Hook();
        using var scope = NewDisposeScope();
        var h = x + SelfAttn.Forward(_inputNorm.Forward(x), batch);
        return (h + _mlp.Forward(_postNorm.Forward(h))).MoveToOuterDisposeScope();
    }
}

public sealed class GemmaModel : HfModule
{
    public override string ClassName => "GemmaModel";
    public Embedding EmbedTokens { get; }
    public IReadOnlyList<GemmaDecoderLayer> Layers { get; }
    public GemmaRmsNorm Norm { get; }

    public GemmaModel(LlamaConfig c)
    {
        EmbedTokens = Child("embed_tokens", new Embedding(c.VocabSize, c.HiddenSize));
        var list = Child("layers", new ModuleList());
        Layers = Enumerable.Range(0, c.NumLayers).Select(i => list.Add(new GemmaDecoderLayer(c, i))).ToList();
        Norm = Child("norm", new GemmaRmsNorm(c.HiddenSize, c.RmsEps));
    }
}

public sealed class GemmaForCausalLM : CausalLMModel
{
    public LlamaConfig Settings { get; }
    public GemmaModel Model { get; }
    public Linear LmHead { get; }

    public GemmaForCausalLM(PretrainedConfig config) : base(config)
    {
        Settings = GemmaFamily.Settings(config);
        Model = Child("model", new GemmaModel(Settings));
        LmHead = Child("lm_head", TieWordEmbeddings ? new Linear(Model.EmbedTokens.Weight) : new Linear(Settings.HiddenSize, Settings.VocabSize, bias: false));
        foreach (var layer in Model.Layers) layer.SelfAttn.Owner = this;
    }

    public override string ClassName => "GemmaForCausalLM";
    public override string BaseModelPrefix => "model";
    public override IReadOnlyList<string> NoSplitModules => new[] { "GemmaDecoderLayer" };
    public override int NumLayers => Settings.NumLayers;
    public override long VocabSize => Config.GetLong("vocab_size");
    public override string LayerPath(int index) => $"model.layers.{index}";
    public override string InputEmbeddingsPath => "model.embed_tokens";
    public override string OutputEmbeddingsPath => "lm_head";
    public override Embedding InputEmbeddings => Model.EmbedTokens;
    public override Linear OutputEmbeddings => LmHead;
    public override string FinalNormPath => "model.norm";

    /// <summary>Embeddings times the normaliser <c>sqrt(hidden_size)</c> as a tensor of the embeddings' dtype (so bf16 rounds it).</summary>
    protected override Tensor EmbedCore(Tensor inputIds, Tensor positionIds)
    {
        using var scope = NewDisposeScope();
        var e = Model.EmbedTokens.Forward(inputIds);
        var normalizer = tensor(Math.Sqrt(Settings.HiddenSize), e.dtype, e.device);
        return (e * normalizer).MoveToOuterDisposeScope();
    }

    public override LayerInputs PrepareLayerInputs(Tensor positionIds, Tensor? attentionMask, long pastLength, long queryLength,
        ScalarType dtype, Device device, KvCache? cache, int firstLayer)
    {
        var mask = AttentionMask.Build(attentionMask, positionIds.Shape()[0], queryLength, pastLength, null, dtype, device, out bool plain);
        var (cos, sin) = Model.Layers[firstLayer].SelfAttn.Rotary.Forward(positionIds.to(Model.Layers[firstLayer].Device), dtype);
        return new LayerInputs { PositionIds = positionIds, Mask = mask, IsPlainCausal = plain, Cos = cos.to(device), Sin = sin.to(device), Cache = cache };
    }

    protected override Tensor LayerCore(int index, Tensor flat, RaggedBatch batch) => Model.Layers[index].Forward(flat, batch);
    protected override Tensor FinalNormCore(Tensor hidden) => Model.Norm.Forward(hidden);
}
