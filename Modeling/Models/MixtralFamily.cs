using System.Threading;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Models;

/// <summary>
/// <c>MixtralForCausalLM</c>: Mistral's attention, rotary tables and sliding window (the Llama family's code), with
/// each block's MLP replaced by a sparse mixture of experts (<see cref="MixtralSparseMoeBlock"/>).
/// </summary>
public static class MixtralFamily
{
    /// <summary>The Llama-family variant for one Mixtral config (the experts' count and top-k are read from it).</summary>
    public static LlamaVariant Variant(PretrainedConfig config)
    {
        var moe = MixtralMoeConfig.From(config);
        return new LlamaVariant("Mixtral", QkvBiasAlways: false, UseSlidingWindow: true, CachedRopeTables: true)
        {
            FeedForward = (c, _) => ("block_sparse_moe", new MixtralSparseMoeBlock(c, moe)),
        };
    }

    public static LlamaForCausalLM Create(PretrainedConfig config) => new(config, Variant(config));
}

/// <summary>The mixture settings of a Mixtral config.json.</summary>
public sealed record MixtralMoeConfig(int NumExperts, int TopK)
{
    public static MixtralMoeConfig From(PretrainedConfig c)
    {
        int experts = c.GetInt("num_local_experts", 8);
        int topK = c.GetInt("num_experts_per_tok", 2);
        if (experts < 1 || experts > 4096)
            throw new CheckpointFormatException(c.SourcePath ?? "config.json", null, $"num_local_experts {experts} is outside 1..4096");
        if (topK < 1 || topK > experts)
            throw new CheckpointFormatException(c.SourcePath ?? "config.json", null, $"num_experts_per_tok {topK} is outside 1..num_local_experts ({experts})");
        return new MixtralMoeConfig(experts, topK);
    }
}

/// <summary>One expert: <c>w2(act(w1 x) · w3 x)</c>.</summary>
public sealed class MixtralBlockSparseTop2MLP : HfModule
{
    public override string ClassName => "MixtralBlockSparseTop2MLP";
    private readonly Linear _w1, _w2, _w3;
    private readonly Func<Tensor, Tensor> _act;
    private readonly string _actName;
    private long _runs;

    /// <summary>How often this expert's weights were read (one run over its rows), since it was built.</summary>
    public long Runs => Interlocked.Read(ref _runs);

    public MixtralBlockSparseTop2MLP(LlamaConfig c)
    {
        _w1 = Child("w1", new Linear(c.HiddenSize, c.IntermediateSize, bias: false));
        _w2 = Child("w2", new Linear(c.IntermediateSize, c.HiddenSize, bias: false));
        _w3 = Child("w3", new Linear(c.HiddenSize, c.IntermediateSize, bias: false));
        Child("act_fn", new Parameterless(Activations.ClassName(c.HiddenAct)));
        _act = Activations.Get(c.HiddenAct);
        _actName = c.HiddenAct;
    }

    public Tensor Forward(Tensor x) // (n, H) -> (n, H)
    {
        using var hook = Hook();
        Interlocked.Increment(ref _runs);
        using var scope = NewDisposeScope();
        return _w2.Forward(Activations.Gated(_actName, _act, _w1.Forward(x), _w3.Forward(x))).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The router (<c>gate</c>) and the experts. Every row is routed (softmax over experts in float32, top-k, the k weights
/// renormalised to sum 1, then cast to the model dtype, as transformers 4.38 does); the rows are then grouped by expert,
/// so each chosen expert runs once over all its rows — in a merged step, the rows of every request — and an expert
/// no row chose is not read at all. Contributions are added in expert order, as HF's <c>index_add_</c> loop does.
/// </summary>
public sealed class MixtralSparseMoeBlock : HfModule, IFeedForward
{
    public override string ClassName => "MixtralSparseMoeBlock";
    private readonly MixtralMoeConfig _moe;
    private readonly Linear _gate;
    private readonly IReadOnlyList<MixtralBlockSparseTop2MLP> _experts;
    private long _calls, _mostRunsInOneCall;

    public MixtralSparseMoeBlock(LlamaConfig c, MixtralMoeConfig moe)
    {
        _moe = moe;
        _gate = Child("gate", new Linear(c.HiddenSize, moe.NumExperts, bias: false));
        var list = Child("experts", new ModuleList());
        _experts = Enumerable.Range(0, moe.NumExperts).Select(_ => list.Add(new MixtralBlockSparseTop2MLP(c))).ToList();
    }

    public IReadOnlyList<MixtralBlockSparseTop2MLP> Experts => _experts;
    public int TopK => _moe.TopK;
    /// <summary>Calls of this block: one per step through its layer, however many requests the step merges.</summary>
    public long Calls => Interlocked.Read(ref _calls);
    /// <summary>The most reads of any one expert's weights within a single call, as counted by the experts.</summary>
    public long MostRunsInOneCall => Interlocked.Read(ref _mostRunsInOneCall);

    public Tensor Forward(Tensor x) // (..., H) -> (..., H)
    {
        using var hook = Hook();
        using var scope = NewDisposeScope();
        long hidden = x.Shape()[^1];
        var flat = x.reshape(-1, hidden);                                                           // (N, H)
        var probs = nn.functional.softmax(_gate.Forward(flat), 1, ScalarType.Float32);             // (N, E) float32
        var (weights, chosen) = probs.topk(_moe.TopK, dim: -1);                                     // (N, k), (N, k)
        weights = (weights / weights.sum(-1, keepdim: true)).to(x.dtype).reshape(-1);               // (N·k)
        var picks = chosen.reshape(-1).data<long>().ToArray();                                      // row r's j-th expert at r·k + j

        var before = _experts.Select(expert => expert.Runs).ToArray();
        Tensor output;
        if (picks.Length == _moe.TopK)
        {
            // One row (a decode step of one request): its k experts on it directly, summed in expert order.
            output = zeros_like(flat);
            foreach (int j in Enumerable.Range(0, _moe.TopK).OrderBy(j => picks[j]))
                output = output + _experts[(int)picks[j]].Forward(flat) * weights.narrow(0, j, 1);
        }
        else output = Grouped(flat, weights, picks);
        Interlocked.Increment(ref _calls);
        long most = _experts.Select((expert, e) => expert.Runs - before[e]).Max();
        if (most > Interlocked.Read(ref _mostRunsInOneCall)) Interlocked.Exchange(ref _mostRunsInOneCall, most);
        return output.view(x.Shape()).MoveToOuterDisposeScope();
    }

    /// <summary>Rows (N, H) grouped by expert: each chosen expert once over its rows, added back in expert order.</summary>
    private Tensor Grouped(Tensor flat, Tensor weights, long[] picks)
    {
        // Each expert's rows (and the slot of its weight), in row order.
        var rows = new List<long>[_moe.NumExperts];
        var slots = new List<long>[_moe.NumExperts];
        for (int i = 0; i < picks.Length; i++)
        {
            int e = (int)picks[i];
            (rows[e] ??= new()).Add(i / _moe.TopK);
            (slots[e] ??= new()).Add(i);
        }
        var output = zeros_like(flat);
        for (int e = 0; e < _moe.NumExperts; e++)
        {
            if (rows[e] is null) continue; // not chosen by any row: its weights stay unread
            var index = tensor(rows[e].ToArray(), device: flat.device);
            var slot = tensor(slots[e].ToArray(), device: flat.device);
            var y = _experts[e].Forward(flat.index_select(0, index)) * weights.index_select(0, slot).unsqueeze(1); // (n_e, H)
            output.index_add_(0, index, y, 1);
        }
        return output;
    }
}
