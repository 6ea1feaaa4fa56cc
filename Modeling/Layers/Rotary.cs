using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>The <c>rope_scaling</c> settings of a config (key <c>type</c> in 4.38, <c>rope_type</c> in newer releases).</summary>
public sealed record RopeScaling(string Type, double Factor, double LowFreqFactor, double HighFreqFactor, long OriginalMaxPositions)
{
    public static RopeScaling? From(PretrainedConfig config, long maxPositions)
    {
        var o = config.GetObject("rope_scaling");
        if (o is null) return null;
        // The same typed reads as the config's own fields; an error names rope_scaling's field.
        var sub = new PretrainedConfig(o, $"{config.SourcePath ?? "config.json"}: rope_scaling");
        string type = sub.GetString("rope_type") ?? sub.GetString("type") ?? "default";
        double factor = sub.GetDouble("factor", 1.0);
        double low = sub.GetDouble("low_freq_factor", 1.0);
        double high = sub.GetDouble("high_freq_factor", 4.0);
        long orig = sub.GetLong("original_max_position_embeddings", maxPositions);
        if (type is not ("default" or "linear" or "dynamic" or "llama3"))
            throw new UnsupportedException($"{config.SourcePath ?? "config.json"}: rope_scaling type '{type}' is not supported (default, linear, dynamic, llama3)");
        return new RopeScaling(type, factor, low, high, orig);
    }
}

/// <summary>
/// Rotary position embedding with HF's <c>inv_freq</c> buffer (and, for the 4.38 Mistral/Qwen2 classes, the
/// <c>cos_cached</c>/<c>sin_cached</c> buffers). Frequencies are computed in float32 and cast to the activation
/// dtype, as HF does.
/// </summary>
public sealed class RotaryEmbedding : HfModule
{
    public override string ClassName { get; }
    private readonly int _dim;
    private readonly double _base;
    private readonly long _maxPositions;
    private readonly RopeScaling? _scaling;
    private readonly TensorSlot? _invFreq;
    private readonly TensorSlot? _cos, _sin;

    /// <param name="invFreqBuffer">false: <c>inv_freq</c> is no buffer of the module (Gemma 4.38 computes it on the fly).</param>
    public RotaryEmbedding(string className, int dim, long maxPositions, double theta, RopeScaling? scaling, bool cachedTables, bool invFreqBuffer = true)
    {
        ClassName = className;
        _dim = dim;
        _base = theta;
        _maxPositions = maxPositions;
        _scaling = scaling;
        if (invFreqBuffer)
            _invFreq = Buffer("inv_freq", new long[] { dim / 2 }, persistent: false, fixedDType: DType.F32,
                (_, device) => InvFreq(_base).to(device));
        if (cachedTables)
        {
            _cos = Buffer("cos_cached", new long[] { maxPositions, dim }, persistent: false, fixedDType: null,
                (dtype, device) => Table(dtype, device, cos: true));
            _sin = Buffer("sin_cached", new long[] { maxPositions, dim }, persistent: false, fixedDType: null,
                (dtype, device) => Table(dtype, device, cos: false));
        }
    }

    /// <summary>1 / base^(2i/dim), with llama3's frequency-dependent rescaling where configured.</summary>
    private Tensor InvFreq(double @base)
    {
        using var scope = NewDisposeScope();
        var exponents = arange(0, _dim, 2, dtype: ScalarType.Int64).to(ScalarType.Float32) / _dim;
        var inv = 1.0f / pow(tensor((float)@base), exponents);
        if (_scaling is { Type: "llama3" } s)
        {
            double lowWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
            double highWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
            var wavelen = 2 * Math.PI / inv;
            var scaled = where(wavelen > lowWavelen, inv / s.Factor, inv);
            var smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
            var smoothed = (1 - smooth) * scaled / s.Factor + smooth * scaled;
            var isMedium = (wavelen >= highWavelen).logical_and(wavelen <= lowWavelen);
            inv = where(isMedium, smoothed, scaled);
        }
        return inv.MoveToOuterDisposeScope();
    }

    private Tensor Table(DType dtype, Device device, bool cos)
    {
        using var scope = NewDisposeScope();
        var t = arange(_maxPositions, dtype: ScalarType.Int64).to(ScalarType.Float32);
        if (_scaling is { Type: "linear" } s) t = t / (float)s.Factor;
        var freqs = outer(t, InvFreq(_base));
        var emb = cat(new[] { freqs, freqs }, -1);
        var table = (cos ? emb.cos() : emb.sin()).to(TorchRuntime.ToScalarType(dtype)).to(device);
        return table.MoveToOuterDisposeScope();
    }

    /// <summary>cos and sin for the given positions: (B, T) int64 → two (B, T, dim) tensors in <paramref name="dtype"/>.</summary>
    public (Tensor Cos, Tensor Sin) Forward(Tensor positionIds, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        Tensor cosT, sinT;
        if (_cos is not null && _sin is not null && _scaling is null or { Type: "linear" })
        {
            var flat = positionIds.reshape(-1);
            long maxPos = flat.max().item<long>();
            if (maxPos < _maxPositions)
            {
                var shape = positionIds.Shape().Append(_dim).ToArray();
                cosT = _cos.Tensor.index_select(0, flat).view(shape).to(dtype);
                sinT = _sin.Tensor.index_select(0, flat).view(shape).to(dtype);
                return (cosT.MoveToOuterDisposeScope(), sinT.MoveToOuterDisposeScope());
            }
        }
        var inv = _invFreq?.Tensor ?? InvFreq(_base).to(positionIds.device);
        var pos = positionIds.to(ScalarType.Float32);
        if (_scaling is { Type: "linear" } lin) pos = pos / (float)lin.Factor;
        if (_scaling is { Type: "dynamic" } dyn)
        {
            long seqLen = positionIds.max().item<long>() + 1;
            if (seqLen > _maxPositions)
            {
                double b = _base * Math.Pow(dyn.Factor * seqLen / _maxPositions - (dyn.Factor - 1), _dim / (double)(_dim - 2));
                inv = InvFreq(b).to(positionIds.device);
            }
        }
        var freqs = pos.unsqueeze(-1) * inv; // (B, T, dim/2)
        var emb = cat(new[] { freqs, freqs }, -1);
        cosT = emb.cos().to(dtype);
        sinT = emb.sin().to(dtype);
        return (cosT.MoveToOuterDisposeScope(), sinT.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// A step's flat queries (N, heads·D) and keys (N, kv_heads·D) rotated with each position's tables (N, 1, D): one
    /// pass over both (<see cref="StepKernels.RotaryPair"/>: one check, no views, each table row widened once) when the
    /// step kernels take them, else <see cref="Apply(Tensor, Tensor, Tensor)"/> on each one's (N, heads, 1, D) view.
    /// Either way the values are the same; the fast path returns (N, heads·D), the other (N, heads, 1, D).
    /// </summary>
    public static (Tensor Q, Tensor K) ApplyPair(Tensor q, int heads, Tensor k, int kvHeads, int headDim, Tensor cos, Tensor sin)
    {
        if (StepKernels.RotaryPairApplies(q, k, cos, sin, headDim)) return StepKernels.RotaryPair(q, k, cos, sin, headDim);
        long n = q.Shape()[0];
        return (Apply(q.view(n, heads, 1, headDim), cos, sin), Apply(k.view(n, kvHeads, 1, headDim), cos, sin));
    }

    /// <summary>x·cos + rotate_half(x)·sin; x (B, H, T, D), cos/sin (B, T, D).</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        if (DecodeKernels.RotaryApplies(x, cos, sin)) return DecodeKernels.Rotary(x, cos, sin); // a decode step: one pass
        using var scope = NewDisposeScope();
        long half = x.Shape()[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        var rotated = cat(new[] { -x2, x1 }, -1);
        var c = cos.unsqueeze(1);
        var s = sin.unsqueeze(1);
        return (x * c + rotated * s).MoveToOuterDisposeScope();
    }
}
