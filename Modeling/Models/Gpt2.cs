using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Models;

/// <summary>Typed view of a GPT-2 config.json (<c>pruned_heads</c>: layer → heads removed, from the unpruned n_head).</summary>
public sealed record Gpt2Config(long Embd, int Layers, int Heads, long Positions, long Vocab, long Inner, double Eps,
    string Activation, bool ScaleAttnWeights, bool ScaleByInverseLayerIdx, IReadOnlyDictionary<int, int[]> PrunedHeads)
{
    public static Gpt2Config From(PretrainedConfig c)
    {
        ConfigLimits.Check(c);
        long embd = c.GetLong("n_embd");
        int heads = c.GetInt("n_head");
        if (heads <= 0 || embd % heads != 0)
            throw new CheckpointFormatException(c.SourcePath ?? "config.json", null, $"n_embd {embd} is not divisible by n_head {heads}");
        int layers = c.GetInt("n_layer");
        return new Gpt2Config(embd, layers, heads, c.GetLong("n_positions", 1024), c.GetLong("vocab_size"),
            c.GetLongOrNull("n_inner") ?? 4 * embd, c.GetDouble("layer_norm_epsilon", 1e-5),
            c.GetString("activation_function") ?? "gelu_new", c.GetBool("scale_attn_weights", true),
            c.GetBool("scale_attn_by_inverse_layer_idx", false), HeadPruning.Read(c, layers, heads));
    }
}

public sealed class Gpt2Attention : HfModule
{
    public override string ClassName => "GPT2Attention";
    private readonly Gpt2Config _c;
    private readonly int _layer;
    private readonly TensorSlot _bias;
    private readonly Conv1D _cAttn, _cProj;
    private readonly Parameterless _attnDropout, _residDropout;
    private readonly long _headDim;
    private readonly HashSet<int> _prunedHeads = new();

    /// <summary>Heads left after pruning (HF's <c>num_heads</c>).</summary>
    public int NumHeads { get; private set; }
    /// <summary>Heads removed, as indices of the unpruned layer (HF's <c>pruned_heads</c>).</summary>
    public IReadOnlySet<int> PrunedHeads => _prunedHeads;

    public Gpt2Attention(Gpt2Config c, int layer)
    {
        _c = c;
        _layer = layer;
        _headDim = c.Embd / c.Heads;
        NumHeads = c.Heads;
        // 4.38 registers the causal table and masked_bias as non-persistent buffers before its projections.
        _bias = Buffer("bias", new long[] { 1, 1, c.Positions, c.Positions }, persistent: false, fixedDType: Checkpoints.DType.BOOL,
            (_, device) => ones(new[] { c.Positions, c.Positions }, ScalarType.Bool, device).tril().view(1, 1, c.Positions, c.Positions));
        Buffer("masked_bias", Array.Empty<long>(), persistent: false, fixedDType: Checkpoints.DType.F32,
            (_, device) => tensor(-1e4f, device: device));
        _cAttn = Child("c_attn", new Conv1D(3 * c.Embd, c.Embd));
        _cProj = Child("c_proj", new Conv1D(c.Embd, c.Embd));
        _attnDropout = Child("attn_dropout", new Parameterless("Dropout"));
        _residDropout = Child("resid_dropout", new Parameterless("Dropout"));
        // As init_weights does with config.pruned_heads: on the meta tree, so the checkpoint's pruned shapes load.
        if (c.PrunedHeads.TryGetValue(layer, out var pruned)) Prune(pruned);
    }

    /// <summary>
    /// GPT2Attention.prune_heads: drops the heads' q, k and v columns of c_attn and their rows of c_proj; heads pruned
    /// before are skipped. Indices are those of the unpruned layer.
    /// </summary>
    public void Prune(IReadOnlyCollection<int> heads)
    {
        if (heads.Count == 0) return;
        var (fresh, keep) = HeadPruning.FindPruneableHeadsAndIndices(heads, NumHeads, _headDim, _prunedHeads);
        if (fresh.Count == 0) return; // all pruned before: HF rebuilds the layers unchanged
        long split = NumHeads * _headDim;
        var keepAttn = keep.Concat(keep.Select(i => i + split)).Concat(keep.Select(i => i + 2 * split)).ToArray();
        HeadPruning.PruneConv1DLayer(_cAttn, keepAttn, dim: 1);
        HeadPruning.PruneConv1DLayer(_cProj, keep, dim: 0);
        NumHeads -= fresh.Count;
        _prunedHeads.UnionWith(fresh);
    }

    /// <summary>Flat (N, E) → (N, E): c_attn and c_proj once over every position, attention with each request's cache (<see cref="RaggedBatch.Attend"/>).</summary>
    public Tensor Forward(Tensor x, RaggedBatch batch)
    {
        using var hook = Hook();
        using var scope = NewDisposeScope();
        var qkv = _cAttn.Forward(x);
        // Decode rows of every request in one call; a prompt's positions per request. At decode the causal table
        // allows every key, so the scores are GPT2Attention._attn's: scaled (by 1/√hd and 1/(layer+1) as configured), masked.
        long split = NumHeads * _headDim;
        double scale = (_c.ScaleAttnWeights ? 1.0 / Math.Sqrt(_headDim) : 1.0) / (_c.ScaleByInverseLayerIdx ? _layer + 1.0 : 1.0);
        var merged = batch.Attend(_layer, qkv.narrow(1, 0, split), qkv.narrow(1, split, split), qkv.narrow(1, 2 * split, split),
            new DecodeAttention.Shape(NumHeads, NumHeads, (int)_headDim, scale), s => Attend(RaggedBatch.Of(qkv, s), s.Inputs), batched: NumHeads > 0);
        return _residDropout.Forward(_cProj.Forward(merged)).MoveToOuterDisposeScope();
    }

    /// <summary>One request's attention: its (B, T, 3S) projections → (B, T, S), S = heads left × head_dim.</summary>
    private Tensor Attend(Tensor qkvRows, LayerInputs inputs)
    {
        long b = qkvRows.Shape()[0], t = qkvRows.Shape()[1], hd = _headDim, split = NumHeads * hd;
        // narrow, not split: a layer whose every head was pruned has S = 0 (its keys still go to the cache).
        Tensor Heads(int part) => qkvRows.narrow(2, part * split, split).view(b, t, NumHeads, hd).transpose(1, 2); // (B, nh, T, hd)
        var q = Heads(0);
        var k = Heads(1);
        var v = Heads(2);
        if (inputs.Cache is { } cache) (k, v) = cache.Update(_layer, k, v);
        long tk = k.Shape()[2];
        var scores = q.matmul(k.transpose(-1, -2));
        using TorchSharp.Scalar root = Math.Sqrt(hd), layerNumber = _layer + 1.0; // Scalars held until the calls return (an implicit conversion's temporary can be finalized mid-call: AttentionMask.Build)
        if (_c.ScaleAttnWeights) scores = scores / root;
        if (_c.ScaleByInverseLayerIdx) scores = scores / layerNumber;
        // Causal order from the bias table, the padding mask added on top, as GPT2Attention._attn does.
        var causal = _bias.Tensor.narrow(2, tk - t, t).narrow(3, 0, tk);
        scores = where(causal, scores, tensor(AttentionMask.MinValue(scores.dtype), scores.dtype, scores.device));
        if (inputs.Mask is not null) scores = scores + inputs.Mask;
        var probs = _attnDropout.Forward(nn.functional.softmax(scores, -1).to(v.dtype));
        return probs.matmul(v).transpose(1, 2).reshape(b, t, split);
    }
}

public sealed class Gpt2Mlp : HfModule
{
    public override string ClassName => "GPT2MLP";
    private readonly Conv1D _fc, _proj;
    private readonly Parameterless _actModule, _dropout;
    private readonly Func<Tensor, Tensor> _act;

    public Gpt2Mlp(Gpt2Config c)
    {
        _fc = Child("c_fc", new Conv1D(c.Inner, c.Embd));
        _proj = Child("c_proj", new Conv1D(c.Embd, c.Inner));
        _actModule = Child("act", new Parameterless(Activations.ClassName(c.Activation)));
        _dropout = Child("dropout", new Parameterless("Dropout"));
        _act = Activations.Get(c.Activation);
    }

    public Tensor Forward(Tensor x)
    {
        using var hook = Hook();
        using var scope = NewDisposeScope();
        var h = _fc.Forward(x);
        using (_actModule.Hook()) h = _act(h); // the activation module's forward, for the memory hooks
        return _dropout.Forward(_proj.Forward(h)).MoveToOuterDisposeScope();
    }
}

public sealed class Gpt2Block : HfModule
{
    public override string ClassName => "GPT2Block";
    private readonly LayerNorm _ln1, _ln2;
    private readonly Gpt2Mlp _mlp;
    public Gpt2Attention Attn { get; }

    public Gpt2Block(Gpt2Config c, int layer)
    {
        _ln1 = Child("ln_1", new LayerNorm(c.Embd, c.Eps));
        Attn = Child("attn", new Gpt2Attention(c, layer));
        _ln2 = Child("ln_2", new LayerNorm(c.Embd, c.Eps));
        _mlp = Child("mlp", new Gpt2Mlp(c));
    }

    public Tensor Forward(Tensor x, RaggedBatch batch) // flat (N, E) → (N, E)
    {
        using var hook = Hook();
        using var scope = NewDisposeScope();
        var h = x + Attn.Forward(_ln1.Forward(x), batch);
        return (h + _mlp.Forward(_ln2.Forward(h))).MoveToOuterDisposeScope();
    }
}

public sealed class Gpt2Model : HfModule
{
    public override string ClassName => "GPT2Model";
    public Embedding Wte { get; }
    public Embedding Wpe { get; }
    public Parameterless Drop { get; }
    public IReadOnlyList<Gpt2Block> H { get; }
    public LayerNorm LnF { get; }

    public Gpt2Model(Gpt2Config c)
    {
        Wte = Child("wte", new Embedding(c.Vocab, c.Embd));
        Wpe = Child("wpe", new Embedding(c.Positions, c.Embd));
        Drop = Child("drop", new Parameterless("Dropout"));
        var list = Child("h", new ModuleList());
        H = Enumerable.Range(0, c.Layers).Select(i => list.Add(new Gpt2Block(c, i))).ToList();
        LnF = Child("ln_f", new LayerNorm(c.Embd, c.Eps));
    }
}

/// <summary><c>GPT2LMHeadModel</c>: Conv1D projections, learned positions, head tied to <c>wte</c>.</summary>
public sealed class Gpt2LMHeadModel : CausalLMModel, IPrunableHeads
{
    public Gpt2Config Settings { get; }
    public Gpt2Model Transformer { get; }
    public Linear LmHead { get; }

    public Gpt2LMHeadModel(PretrainedConfig config) : base(config)
    {
        Settings = Gpt2Config.From(config);
        Transformer = Child("transformer", new Gpt2Model(Settings));
        LmHead = Child("lm_head", TieWordEmbeddings ? new Linear(Transformer.Wte.Weight) : new Linear(Settings.Embd, Settings.Vocab, bias: false));
    }

    public override string ClassName => "GPT2LMHeadModel";
    public override string BaseModelPrefix => "transformer";
    public override IReadOnlyList<string> NoSplitModules => new[] { "GPT2Block" };
    public override int NumLayers => Settings.Layers;
    public override long VocabSize => Config.GetLong("vocab_size"); // follows resize_token_embeddings
    public override string LayerPath(int index) => $"transformer.h.{index}";
    public override string InputEmbeddingsPath => "transformer.wte";
    public override string OutputEmbeddingsPath => "lm_head";
    public override Embedding InputEmbeddings => Transformer.Wte;
    public override Linear OutputEmbeddings => LmHead;

    protected override Tensor EmbedCore(Tensor inputIds, Tensor positionIds)
    {
        using var scope = NewDisposeScope();
        return Transformer.Drop.Forward(Transformer.Wte.Forward(inputIds) + Transformer.Wpe.Forward(positionIds)).MoveToOuterDisposeScope();
    }

    public override LayerInputs PrepareLayerInputs(Tensor positionIds, Tensor? attentionMask, long pastLength, long queryLength,
        ScalarType dtype, Device device, KvCache? cache, int firstLayer)
    {
        // GPT2Model turns the 2-D mask into (1 - mask) * finfo.min over keys, (B, 1, 1, Tk); causal order comes from the bias buffer.
        Tensor? mask = null;
        if (attentionMask is not null)
        {
            using var scope = NewDisposeScope();
            long tk = pastLength + queryLength;
            var m = attentionMask.narrow(1, attentionMask.Shape()[1] - tk, tk).to(dtype).view(attentionMask.Shape()[0], 1, 1, tk);
            mask = ((1.0 - m) * AttentionMask.MinValue(dtype)).to(device).MoveToOuterDisposeScope();
        }
        return new LayerInputs { PositionIds = positionIds, Mask = mask, Cache = cache };
    }

    protected override Tensor LayerCore(int index, Tensor flat, RaggedBatch batch) => Transformer.H[index].Forward(flat, batch);

    protected override Tensor FinalNormCore(Tensor hidden) => Transformer.LnF.Forward(hidden);
    public override string FinalNormPath => "transformer.ln_f";

    public int ConfiguredHeads => Settings.Heads;

    /// <summary>GPT2Model._prune_heads for one layer.</summary>
    public void PruneLayerHeads(int layer, IReadOnlyCollection<int> heads) => Transformer.H[layer].Attn.Prune(heads);
}
