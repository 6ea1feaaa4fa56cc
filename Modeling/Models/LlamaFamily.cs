using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Models;

/// <summary>
/// The settings that tell Llama, Mistral and Qwen2 apart; the three share one implementation, as their HF
/// modeling files share code ("Copied from ... Llama").
/// </summary>
public sealed record LlamaVariant(string Prefix, bool QkvBiasAlways, bool UseSlidingWindow, bool CachedRopeTables)
{
    public static readonly LlamaVariant Llama = new("Llama", QkvBiasAlways: false, UseSlidingWindow: false, CachedRopeTables: false);
    public static readonly LlamaVariant Mistral = new("Mistral", QkvBiasAlways: false, UseSlidingWindow: true, CachedRopeTables: true);
    public static readonly LlamaVariant Qwen2 = new("Qwen2", QkvBiasAlways: true, UseSlidingWindow: true, CachedRopeTables: true);

    /// <summary>Whether the rotary embedding registers <c>inv_freq</c> as a buffer (Gemma 4.38 computes it on the fly).</summary>
    public bool InvFreqBuffer { get; init; } = true;

    /// <summary>
    /// The block's feed-forward, by layer index: its HF name and module. Null: <see cref="LlamaMlp"/> as <c>mlp</c>
    /// (Mixtral's is its sparse mixture of experts, <c>block_sparse_moe</c>).
    /// </summary>
    public Func<LlamaConfig, int, (string Name, IFeedForward Module)>? FeedForward { get; init; }
}

/// <summary>A decoder block's feed-forward part: (…, H) → (…, H), row by row.</summary>
public interface IFeedForward
{
    Tensor Forward(Tensor x);
}

/// <summary>Typed view of a Llama-family config.json.</summary>
public sealed record LlamaConfig(
    long HiddenSize, long IntermediateSize, int NumLayers, int NumHeads, int NumKvHeads, int HeadDim, long VocabSize,
    long MaxPositions, double RmsEps, double RopeTheta, RopeScaling? Scaling, bool AttentionBias, bool MlpBias,
    string HiddenAct, long? SlidingWindow)
{
    public static LlamaConfig From(PretrainedConfig c, LlamaVariant variant)
    {
        ConfigLimits.Check(c);
        long hidden = c.GetLong("hidden_size");
        int heads = c.GetInt("num_attention_heads");
        long maxPos = c.GetLong("max_position_embeddings", 2048);
        if (heads <= 0 || hidden % heads != 0 && !c.Has("head_dim"))
            throw new CheckpointFormatException(c.SourcePath ?? "config.json", null, $"hidden_size {hidden} is not divisible by num_attention_heads {heads}");
        int kvHeads = c.Has("num_key_value_heads") ? c.GetInt("num_key_value_heads") : heads;
        if (kvHeads <= 0 || heads % kvHeads != 0)
            throw new CheckpointFormatException(c.SourcePath ?? "config.json", null, $"num_attention_heads {heads} is not a multiple of num_key_value_heads {kvHeads}");
        long? window = null;
        // As transformers 4.38's eager path (the reference data's): Mistral and Qwen2 build their mask with
        // config.sliding_window whenever it is set; Qwen2 does so even with use_sliding_window false.
        if (variant.UseSlidingWindow && c.Has("sliding_window")) window = c.GetLong("sliding_window");
        return new LlamaConfig(hidden, c.GetLong("intermediate_size"), c.GetInt("num_hidden_layers"), heads, kvHeads,
            c.Has("head_dim") ? c.GetInt("head_dim") : (int)(hidden / heads), c.GetLong("vocab_size"), maxPos,
            c.GetDouble("rms_norm_eps", 1e-6), c.GetDouble("rope_theta", 10000.0), RopeScaling.From(c, maxPos),
            c.GetBool("attention_bias", false), c.GetBool("mlp_bias", false), c.GetString("hidden_act") ?? "silu", window);
    }
}

public sealed class LlamaMlp : HfModule, IFeedForward
{
    public override string ClassName { get; }
    private readonly Linear _gate, _up, _down;
    private readonly Func<Tensor, Tensor> _act;
    private readonly string _actName;
    private readonly Parameterless _actFn;
    internal Linear Gate => _gate;
    internal Linear Up => _up;
    internal Linear Down => _down;
    internal string ActName => _actName;
    internal Parameterless ActFn => _actFn;

    public LlamaMlp(LlamaVariant v, LlamaConfig c)
    {
        _actName = c.HiddenAct;
        ClassName = v.Prefix + "MLP";
        _gate = Child("gate_proj", new Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias));
        _up = Child("up_proj", new Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias));
        _down = Child("down_proj", new Linear(c.IntermediateSize, c.HiddenSize, c.MlpBias));
        _actFn = Child("act_fn", new Parameterless(Activations.ClassName(c.HiddenAct)));
        _act = Activations.Get(c.HiddenAct);
    }

    public Tensor Forward(Tensor x) // (B, T, H) -> (B, T, H)
    {
        using var hook = Hook();
        using var scope = NewDisposeScope();
        var gateUp = Linear.Forward(x, _gate, _up); // one kernel job for both in a decode step
        Tensor h;
        if (_actFn.MemoryHook is null) h = Activations.Gated(_actName, _act, gateUp[0], gateUp[1]); // SiLU·up in one pass in a decode step
        else
        {
            Tensor gate;
            using (_actFn.Hook()) gate = _act(gateUp[0]); // act_fn's forward, for the memory hooks
            h = gate * gateUp[1];
        }
        return _down.Forward(h).MoveToOuterDisposeScope();
    }
}

public sealed class LlamaAttention : HfModule
{
    public override string ClassName { get; }
    private readonly LlamaConfig _c;
    private readonly int _layer;
    private readonly Linear _q, _k, _v, _o;
    internal LlamaConfig Settings => _c;
    internal int Index => _layer;
    internal Linear Q => _q;
    internal Linear K => _k;
    internal Linear V => _v;
    internal Linear O => _o;
    public RotaryEmbedding Rotary { get; }
    internal CausalLMModel? Owner { get; set; }

    public LlamaAttention(LlamaVariant v, LlamaConfig c, int layer)
    {
        ClassName = v.Prefix + "Attention";
        _c = c;
        _layer = layer;
        bool qkvBias = v.QkvBiasAlways || c.AttentionBias;
        _q = Child("q_proj", new Linear(c.HiddenSize, (long)c.NumHeads * c.HeadDim, qkvBias));
        _k = Child("k_proj", new Linear(c.HiddenSize, (long)c.NumKvHeads * c.HeadDim, qkvBias));
        _v = Child("v_proj", new Linear(c.HiddenSize, (long)c.NumKvHeads * c.HeadDim, qkvBias));
        _o = Child("o_proj", new Linear((long)c.NumHeads * c.HeadDim, c.HiddenSize, c.AttentionBias));
        Rotary = Child("rotary_emb", new RotaryEmbedding(v.Prefix + "RotaryEmbedding", c.HeadDim, c.MaxPositions, c.RopeTheta, c.Scaling, v.CachedRopeTables, v.InvFreqBuffer));
    }

    /// <summary>
    /// Flat (N, H) → (N, H) for the batch's requests: the projections run once over every position, attention with each
    /// request's rows, rotary positions, cache and mask (<see cref="RaggedBatch.Attend"/>).
    /// </summary>
    public Tensor Forward(Tensor x, RaggedBatch batch)
    {
        using var hook = Hook();
        using var scope = NewDisposeScope();
        // Every position of every request at once: projections, then rotary (each position's own angles).
        var qkv = Linear.Forward(x, _q, _k, _v); // one kernel job for the three in a decode step
        var (q, k) = RotaryEmbedding.ApplyPair(qkv[0], _c.NumHeads, qkv[1], _c.NumKvHeads, _c.HeadDim, batch.FlatCos!, batch.FlatSin!); // N rows of nh·hd, nkv·hd
        var v = qkv[2];
        // Decode rows of every request in one call; a prompt's positions (and the eager path) per request.
        var merged = batch.Attend(_layer, q, k, v, new DecodeAttention.Shape(_c.NumHeads, _c.NumKvHeads, _c.HeadDim, 1.0 / Math.Sqrt(_c.HeadDim)),
            s => Attend(q, k, v, s), batched: Owner?.Attention != AttnImplementation.Eager);
        return _o.Forward(merged).MoveToOuterDisposeScope();
    }

    /// <summary>One request's attention over its own cache: its positions of q, k, v → (B, T, heads·hd).</summary>
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
        Tensor attn = Owner?.Attention == AttnImplementation.Eager
            ? Eager(q, k, v, inputs.Mask)
            : nn.functional.scaled_dot_product_attention(q, k, v, inputs.Mask, 0.0, inputs.Mask is null && inputs.IsPlainCausal && t > 1);
        return attn.transpose(1, 2).reshape(b, t, (long)_c.NumHeads * _c.HeadDim);
    }

    /// <summary>HF's eager attention: scores in the model dtype, softmax in float32, cast back.</summary>
    private Tensor Eager(Tensor q, Tensor k, Tensor v, Tensor? mask)
    {
        using TorchSharp.Scalar root = Math.Sqrt(_c.HeadDim); // Scalars held until the calls return (an implicit conversion's temporary can be finalized mid-call: AttentionMask.Build)
        var scores = q.matmul(k.transpose(2, 3)) / root;
        if (mask is not null) scores = scores + mask;
        else if (q.Shape()[2] > 1)
            scores = scores + AttentionMask.Build(null, q.Shape()[0], q.Shape()[2], k.Shape()[2] - q.Shape()[2], _c.SlidingWindow, scores.dtype, scores.device, out _)!;
        var probs = nn.functional.softmax(scores, -1, ScalarType.Float32).to(q.dtype);
        return probs.matmul(v);
    }
}

public sealed class LlamaDecoderLayer : HfModule
{
    public override string ClassName { get; }
    public LlamaAttention SelfAttn { get; }
    private readonly IFeedForward _mlp;
    private readonly RmsNorm _inputNorm, _postNorm;
    internal IFeedForward Mlp => _mlp;
    internal RmsNorm InputNorm => _inputNorm;
    internal RmsNorm PostNorm => _postNorm;
    /// <summary>How <see cref="LlamaDecodeLayer"/> runs this block's products (kept while its weights stay in place).</summary>
    internal LlamaDecodeLayer.Plan? DecodePlan { get; set; }

    public LlamaDecoderLayer(LlamaVariant v, LlamaConfig c, int index)
    {
        ClassName = v.Prefix + "DecoderLayer";
        SelfAttn = Child("self_attn", new LlamaAttention(v, c, index));
        var (name, mlp) = v.FeedForward?.Invoke(c, index) ?? ("mlp", new LlamaMlp(v, c));
        _mlp = mlp;
        Child(name, (HfModule)mlp);
        _inputNorm = Child("input_layernorm", new RmsNorm(v.Prefix + "RMSNorm", c.HiddenSize, c.RmsEps));
        _postNorm = Child("post_attention_layernorm", new RmsNorm(v.Prefix + "RMSNorm", c.HiddenSize, c.RmsEps));
    }

    /// <summary>Flat (N, H) → (N, H): the batch's requests together (<see cref="RaggedBatch"/>).</summary>
    public Tensor Forward(Tensor x, RaggedBatch batch)
    {
        if (LlamaDecodeLayer.TryForward(this, x, batch) is { } fast) return fast; // a step of decode rows: the same kernels without the module scaffolding
        using var hook = Hook();
        using var scope = NewDisposeScope();
        var normed = _postNorm.ForwardAdd(x, SelfAttn.Forward(_inputNorm.Forward(x), batch), out var h); // h = x + attention, and its norm, in one pass
        var y = h + _mlp.Forward(normed);
        return y.MoveToOuterDisposeScope();
    }
}

/// <summary>The base model (<c>LlamaModel</c>, <c>MistralModel</c>, <c>Qwen2Model</c>): embeddings, blocks, final norm.</summary>
public sealed class LlamaModel : HfModule
{
    public override string ClassName { get; }
    public Embedding EmbedTokens { get; }
    public IReadOnlyList<LlamaDecoderLayer> Layers { get; }
    public RmsNorm Norm { get; }

    public LlamaModel(LlamaVariant v, LlamaConfig c)
    {
        ClassName = v.Prefix + "Model";
        EmbedTokens = Child("embed_tokens", new Embedding(c.VocabSize, c.HiddenSize));
        var list = Child("layers", new ModuleList());
        Layers = Enumerable.Range(0, c.NumLayers).Select(i => list.Add(new LlamaDecoderLayer(v, c, i))).ToList();
        Norm = Child("norm", new RmsNorm(v.Prefix + "RMSNorm", c.HiddenSize, c.RmsEps));
    }
}

/// <summary><c>LlamaForCausalLM</c> / <c>MistralForCausalLM</c> / <c>Qwen2ForCausalLM</c>.</summary>
public sealed class LlamaForCausalLM : CausalLMModel
{
    private readonly LlamaVariant _variant;
    public LlamaConfig Settings { get; }
    public LlamaModel Model { get; }
    public Linear LmHead { get; }

    public LlamaForCausalLM(PretrainedConfig config, LlamaVariant variant) : base(config)
    {
        _variant = variant;
        Settings = LlamaConfig.From(config, variant);
        Model = Child("model", new LlamaModel(variant, Settings));
        LmHead = Child("lm_head", TieWordEmbeddings ? new Linear(Model.EmbedTokens.Weight) : new Linear(Settings.HiddenSize, Settings.VocabSize, bias: false));
        foreach (var layer in Model.Layers) layer.SelfAttn.Owner = this;
    }

    public override string ClassName => _variant.Prefix + "ForCausalLM";
    public override string BaseModelPrefix => "model";
    public override IReadOnlyList<string> NoSplitModules => new[] { _variant.Prefix + "DecoderLayer" };
    public override int NumLayers => Settings.NumLayers;
    public override long VocabSize => Config.GetLong("vocab_size"); // follows resize_token_embeddings
    public override string LayerPath(int index) => $"model.layers.{index}";
    public override string InputEmbeddingsPath => "model.embed_tokens";
    public override string OutputEmbeddingsPath => "lm_head";
    public override Embedding InputEmbeddings => Model.EmbedTokens;
    public override Linear OutputEmbeddings => LmHead;

    protected override Tensor EmbedCore(Tensor inputIds, Tensor positionIds) => Model.EmbedTokens.Forward(inputIds);

    public override long? SlidingWindow => Settings.SlidingWindow;

    public override LayerInputs PrepareLayerInputs(Tensor positionIds, Tensor? attentionMask, long pastLength, long queryLength,
        ScalarType dtype, Device device, KvCache? cache, int firstLayer)
    {
        var mask = AttentionMask.Build(attentionMask, positionIds.Shape()[0], queryLength, pastLength, Settings.SlidingWindow, dtype, device, out bool plain);
        var rotary = Model.Layers[firstLayer].SelfAttn.Rotary; // every layer's tables are equal; this one is materialised here
        var (cos, sin) = rotary.Forward(positionIds.to(Model.Layers[firstLayer].Device), dtype);
        return new LayerInputs { PositionIds = positionIds, Mask = mask, IsPlainCausal = plain, Cos = cos.to(device), Sin = sin.to(device), Cache = cache };
    }

    protected override Tensor LayerCore(int index, Tensor flat, RaggedBatch batch) => Model.Layers[index].Forward(flat, batch);

    protected override Tensor FinalNormCore(Tensor hidden) => Model.Norm.Forward(hidden);
    public override string FinalNormPath => "model.norm";
}

/// <summary>torch.nn.ModuleList: children named 0, 1, 2 …</summary>
public sealed class ModuleList : HfModule
{
    public override string ClassName => "ModuleList";
    private int _count;

    public T Add<T>(T module) where T : HfModule => Child((_count++).ToString(System.Globalization.CultureInfo.InvariantCulture), module);
}
