using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Models;

/// <summary>Typed view of a Phi (phi-2 style) config.json.</summary>
public sealed record PhiConfig(long HiddenSize, long IntermediateSize, int NumLayers, int NumHeads, int NumKvHeads, int HeadDim, int RotaryDim,
    long VocabSize, long MaxPositions, double LayerNormEps, double RopeTheta, RopeScaling? Scaling, string HiddenAct)
{
    public static PhiConfig From(PretrainedConfig c)
    {
        ConfigLimits.Check(c);
        string file = c.SourcePath ?? "config.json";
        long hidden = c.GetLong("hidden_size");
        int heads = c.GetInt("num_attention_heads");
        if (heads <= 0 || hidden % heads != 0)
            throw new CheckpointFormatException(file, null, $"hidden_size {hidden} is not divisible by num_attention_heads {heads}");
        int kvHeads = c.Has("num_key_value_heads") ? c.GetInt("num_key_value_heads") : heads;
        if (kvHeads <= 0 || heads % kvHeads != 0)
            throw new CheckpointFormatException(file, null, $"num_attention_heads {heads} is not a multiple of num_key_value_heads {kvHeads}");
        if (c.GetBool("qk_layernorm", false))
            throw new UnsupportedException($"{file}: qk_layernorm true is not supported");
        int headDim = (int)(hidden / heads);
        double factor = c.GetDouble("partial_rotary_factor", 0.5);
        if (!(factor > 0 && factor <= 1))
            throw new CheckpointFormatException(file, null, $"partial_rotary_factor {factor} is outside (0, 1]");
        int rotaryDim = (int)(factor * headDim); // int(partial_rotary_factor * head_dim), as PhiAttention
        if (rotaryDim < 2 || rotaryDim % 2 != 0)
            throw new UnsupportedException($"{file}: partial_rotary_factor {factor} gives rotary dim {rotaryDim} (needs an even number ≥ 2)");
        long maxPos = c.GetLong("max_position_embeddings", 2048);
        return new PhiConfig(hidden, c.GetLong("intermediate_size"), c.GetInt("num_hidden_layers"), heads, kvHeads, headDim, rotaryDim,
            c.GetLong("vocab_size"), maxPos, c.GetDouble("layer_norm_eps", 1e-5), c.GetDouble("rope_theta", 10000.0),
            RopeScaling.From(c, maxPos), c.GetString("hidden_act") ?? "gelu_new");
    }
}

/// <summary>PhiAttention: biased q/k/v and <c>dense</c>, rotary on the first <c>RotaryDim</c> of each head only, scores in float32.</summary>
public sealed class PhiAttention : HfModule
{
    public override string ClassName => "PhiAttention";
    private readonly PhiConfig _c;
    private readonly int _layer;
    private readonly Linear _q, _k, _v, _dense;
    public RotaryEmbedding Rotary { get; }
    internal CausalLMModel? Owner { get; set; }

    public PhiAttention(PhiConfig c, int layer)
    {
        _c = c;
        _layer = layer;
        _q = Child("q_proj", new Linear(c.HiddenSize, (long)c.NumHeads * c.HeadDim, bias: true));
        _k = Child("k_proj", new Linear(c.HiddenSize, (long)c.NumKvHeads * c.HeadDim, bias: true));
        _v = Child("v_proj", new Linear(c.HiddenSize, (long)c.NumKvHeads * c.HeadDim, bias: true));
        _dense = Child("dense", new Linear((long)c.NumHeads * c.HeadDim, c.HiddenSize, bias: true));
        Rotary = Child("rotary_emb", new RotaryEmbedding("PhiRotaryEmbedding", c.RotaryDim, c.MaxPositions, c.RopeTheta, c.Scaling, cachedTables: true));
    }

    /// <summary>Flat (N, H) → (N, H): projections once over every position, attention with each request's cache (<see cref="RaggedBatch.Attend"/>).</summary>
    public Tensor Forward(Tensor x, RaggedBatch batch)
    {
        using var hook = Hook();
        using var scope = NewDisposeScope();
        long n = x.Shape()[0];
        var q = PartialRotary(_q.Forward(x).view(n, _c.NumHeads, 1, _c.HeadDim), batch);   // (N, nh, 1, hd)
        var k = PartialRotary(_k.Forward(x).view(n, _c.NumKvHeads, 1, _c.HeadDim), batch); // (N, nkv, 1, hd)
        var v = _v.Forward(x);
        // Decode rows of every request in one call (scores in float32, as Phi upcasts them); a prompt's positions per request.
        var merged = batch.Attend(_layer, q, k, v, new DecodeAttention.Shape(_c.NumHeads, _c.NumKvHeads, _c.HeadDim, 1.0 / Math.Sqrt(_c.HeadDim)),
            s => Attend(q, k, v, s), batched: Owner?.Attention != AttnImplementation.Eager);
        return _dense.Forward(merged).MoveToOuterDisposeScope();
    }

    /// <summary>Rotates the first <c>RotaryDim</c> channels of each head and passes the rest through.</summary>
    private Tensor PartialRotary(Tensor x, RaggedBatch batch)
    {
        int rd = _c.RotaryDim;
        var rotated = RotaryEmbedding.Apply(x.narrow(-1, 0, rd), batch.FlatCos!, batch.FlatSin!);
        return rd == _c.HeadDim ? rotated : cat(new[] { rotated, x.narrow(-1, rd, _c.HeadDim - rd) }, -1);
    }

    private Tensor Attend(Tensor qAll, Tensor kAll, Tensor vAll, RaggedBatch.Segment s)
    {
        long b = s.Rows, t = s.Tokens;
        Tensor Heads(Tensor all, int heads) => all.narrow(0, s.Offset, s.Count).view(b, t, heads, _c.HeadDim).transpose(1, 2); // (B, heads, T, hd)
        var q = Heads(qAll, _c.NumHeads);
        var k = Heads(kAll, _c.NumKvHeads);
        var v = Heads(vAll, _c.NumKvHeads);
        var inputs = s.Inputs;
        if (inputs.Cache is { } cache) (k, v) = cache.Update(_layer, k, v);
        int groups = _c.NumHeads / _c.NumKvHeads;
        if (groups > 1)
        {
            k = k.repeat_interleave(groups, dim: 1);
            v = v.repeat_interleave(groups, dim: 1);
        }
        Tensor attn;
        if (Owner?.Attention == AttnImplementation.Eager || q.dtype != ScalarType.Float32)
        {
            // PhiAttention upcasts queries and keys to float32 for the scores (phi-2 overflows otherwise).
            using TorchSharp.Scalar root = Math.Sqrt(_c.HeadDim); // Scalars held until the calls return (an implicit conversion's temporary can be finalized mid-call: AttentionMask.Build)
            var scores = q.to(ScalarType.Float32).matmul(k.to(ScalarType.Float32).transpose(2, 3)) / root;
            var mask = inputs.Mask;
            if (mask is null && t > 1)
                mask = AttentionMask.Build(null, b, t, k.Shape()[2] - t, null, q.dtype, q.device, out _);
            if (mask is not null) scores = scores + mask;
            attn = nn.functional.softmax(scores, -1, ScalarType.Float32).to(v.dtype).matmul(v);
        }
        else
        {
            attn = nn.functional.scaled_dot_product_attention(q, k, v, inputs.Mask, 0.0, inputs.Mask is null && inputs.IsPlainCausal && t > 1);
        }
        return attn.transpose(1, 2).reshape(b, t, (long)_c.NumHeads * _c.HeadDim);
    }
}

/// <summary>PhiMLP: <c>fc2(act(fc1 x))</c>, both biased.</summary>
public sealed class PhiMlp : HfModule
{
    public override string ClassName => "PhiMLP";
    private readonly Linear _fc1, _fc2;
    private readonly Func<Tensor, Tensor> _act;

    public PhiMlp(PhiConfig c)
    {
        Child("activation_fn", new Parameterless(Activations.ClassName(c.HiddenAct)));
        _act = Activations.Get(c.HiddenAct);
        _fc1 = Child("fc1", new Linear(c.HiddenSize, c.IntermediateSize, bias: true));
        _fc2 = Child("fc2", new Linear(c.IntermediateSize, c.HiddenSize, bias: true));
    }

    public Tensor Forward(Tensor x)
    {
        using var hook = Hook();
        using var scope = NewDisposeScope();
        return _fc2.Forward(_act(_fc1.Forward(x))).MoveToOuterDisposeScope();
    }
}

/// <summary>PhiDecoderLayer: one LayerNorm feeds attention and the MLP in parallel; both are added to the input.</summary>
public sealed class PhiDecoderLayer : HfModule
{
    public override string ClassName => "PhiDecoderLayer";
    public PhiAttention SelfAttn { get; }
    private readonly PhiMlp _mlp;
    private readonly LayerNorm _inputNorm;

    public PhiDecoderLayer(PhiConfig c, int index)
    {
        SelfAttn = Child("self_attn", new PhiAttention(c, index));
        _mlp = Child("mlp", new PhiMlp(c));
        _inputNorm = Child("input_layernorm", new LayerNorm(c.HiddenSize, c.LayerNormEps));
        Child("resid_dropout", new Parameterless("Dropout"));
    }

    public Tensor Forward(Tensor x, RaggedBatch batch) // flat (N, H) → (N, H)
    {
        using var hook = Hook();
        using var scope = NewDisposeScope();
        var h = _inputNorm.Forward(x);
        return (SelfAttn.Forward(h, batch) + _mlp.Forward(h) + x).MoveToOuterDisposeScope();
    }
}

public sealed class PhiModel : HfModule
{
    public override string ClassName => "PhiModel";
    public Embedding EmbedTokens { get; }
    public IReadOnlyList<PhiDecoderLayer> Layers { get; }
    public LayerNorm FinalLayerNorm { get; }

    public PhiModel(PhiConfig c)
    {
        EmbedTokens = Child("embed_tokens", new Embedding(c.VocabSize, c.HiddenSize));
        Child("embed_dropout", new Parameterless("Dropout"));
        var list = Child("layers", new ModuleList());
        Layers = Enumerable.Range(0, c.NumLayers).Select(i => list.Add(new PhiDecoderLayer(c, i))).ToList();
        FinalLayerNorm = Child("final_layernorm", new LayerNorm(c.HiddenSize, c.LayerNormEps));
    }
}

/// <summary><c>PhiForCausalLM</c>: untied head with a bias.</summary>
public sealed class PhiForCausalLM : CausalLMModel
{
    public PhiConfig Settings { get; }
    public PhiModel Model { get; }
    public Linear LmHead { get; }

    public PhiForCausalLM(PretrainedConfig config) : base(config)
    {
        Settings = PhiConfig.From(config);
        Model = Child("model", new PhiModel(Settings));
        LmHead = Child("lm_head", new Linear(Settings.HiddenSize, Settings.VocabSize, bias: true));
        foreach (var layer in Model.Layers) layer.SelfAttn.Owner = this;
    }

    public override string ClassName => "PhiForCausalLM";
    public override string BaseModelPrefix => "model";
    public override IReadOnlyList<string> NoSplitModules => new[] { "PhiDecoderLayer" };
    public override int NumLayers => Settings.NumLayers;
    public override long VocabSize => Config.GetLong("vocab_size");
    public override string LayerPath(int index) => $"model.layers.{index}";
    public override string InputEmbeddingsPath => "model.embed_tokens";
    public override string OutputEmbeddingsPath => "lm_head";
    public override Embedding InputEmbeddings => Model.EmbedTokens;
    public override Linear OutputEmbeddings => LmHead;
    public override string FinalNormPath => "model.final_layernorm";

    protected override Tensor EmbedCore(Tensor inputIds, Tensor positionIds) => Model.EmbedTokens.Forward(inputIds);

    public override LayerInputs PrepareLayerInputs(Tensor positionIds, Tensor? attentionMask, long pastLength, long queryLength,
        ScalarType dtype, Device device, KvCache? cache, int firstLayer)
    {
        var mask = AttentionMask.Build(attentionMask, positionIds.Shape()[0], queryLength, pastLength, null, dtype, device, out bool plain);
        var (cos, sin) = Model.Layers[firstLayer].SelfAttn.Rotary.Forward(positionIds.to(Model.Layers[firstLayer].Device), dtype);
        return new LayerInputs { PositionIds = positionIds, Mask = mask, IsPlainCausal = plain, Cos = cos.to(device), Sin = sin.to(device), Cache = cache };
    }

    protected override Tensor LayerCore(int index, Tensor flat, RaggedBatch batch) => Model.Layers[index].Forward(flat, batch);
    protected override Tensor FinalNormCore(Tensor hidden) => Model.FinalLayerNorm.Forward(hidden);
}
