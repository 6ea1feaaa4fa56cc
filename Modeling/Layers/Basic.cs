using ShardPipe.Modeling.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>torch.nn.Linear: weight [out, in], optional bias [out].</summary>
public sealed class Linear : HfModule
{
    public override string ClassName => "Linear";
    public TensorSlot Weight { get; }
    public TensorSlot? Bias { get; }

    public Linear(long inFeatures, long outFeatures, bool bias)
    {
        Weight = Parameter("weight", outFeatures, inFeatures);
        if (bias) Bias = Parameter("bias", outFeatures);
    }

    /// <summary>A head whose weight is another module's (tied embeddings).</summary>
    public Linear(TensorSlot tiedWeight)
    {
        Weight = TiedParameter("weight", tiedWeight);
    }

    /// <summary>How a quantized weight is stored and held (null: a float weight); see <c>Quantization/QuantizedLinears</c>.</summary>
    public Quantization.QuantizedState? Quantized { get; internal set; }

    public long InFeatures => Weight.Shape[1];
    public long OutFeatures => Weight.Shape[0];

    public Tensor Forward(Tensor x)
    {
        using var hook = Hook();
        return Quantized?.Packed is { } packed
            ? QuantKernels.Linear(x, packed, Bias?.Tensor)
            : DecodeKernels.Applies(x, Weight.Tensor)
            ? DecodeKernels.LinearBf16(x, Weight.Tensor, Bias?.Tensor)
            : Fp32Kernels.Applies(x, Weight.Tensor)
            ? Fp32Kernels.Linear(x, Weight.Tensor, Bias?.Tensor)
            : nn.functional.linear(x, Weight.Tensor, Bias?.Tensor);
    }

    /// <summary>
    /// Linears of one input (a layer's q, k, v; an MLP's gate and up): one kernel job for them all when each would take
    /// the same kernel on its own — bf16 (<see cref="DecodeKernels.LinearsBf16"/>), float32 (<see cref="Fp32Kernels.Linears"/>)
    /// or one-row packed products of one layout (<see cref="QuantKernels.Linears"/>) — and no memory hook watches them;
    /// otherwise each one's <see cref="Forward(Tensor)"/>. The outputs are the same either way, bit for bit.
    /// </summary>
    public static Tensor[] Forward(Tensor x, params Linear[] linears)
    {
        if (linears.Length < 2 || linears.Any(l => l.MemoryHook is not null)) return Each(x, linears);
        var biases = linears.Select(l => l.Bias?.Tensor).ToArray();
        if (linears.All(l => l.Quantized?.Packed is not null))
            return QuantKernels.Linears(x, linears.Select(l => l.Quantized!.Packed!).ToArray(), biases);
        if (linears.Any(l => l.Quantized?.Packed is not null)) return Each(x, linears);
        var weights = linears.Select(l => l.Weight.Tensor).ToArray();
        if (weights.All(w => DecodeKernels.Applies(x, w))) return DecodeKernels.LinearsBf16(x, weights, biases);
        if (weights.All(w => Fp32Kernels.Applies(x, w))) return Fp32Kernels.Linears(x, weights, biases);
        return Each(x, linears);
    }

    private static Tensor[] Each(Tensor x, Linear[] linears) => linears.Select(one => one.Forward(x)).ToArray();

    /// <summary>Replaces this module's tensors (quantized formats); the weight slot keeps the logical shape.</summary>
    internal void SetTensors(IEnumerable<(string Name, TensorSlot Slot)> tensors) => ReplaceTensors(tensors);
}

/// <summary>GPT-2's Conv1D: a linear layer whose weight is stored transposed, [in, out] (head pruning may narrow either).</summary>
public sealed class Conv1D : HfModule
{
    public override string ClassName => "Conv1D";
    public TensorSlot Weight { get; }
    public TensorSlot Bias { get; }

    public Conv1D(long outFeatures, long inFeatures)
    {
        Weight = Parameter("weight", inFeatures, outFeatures);
        Bias = Parameter("bias", outFeatures);
    }

    public Tensor Forward(Tensor x) // (..., in) -> (..., out)
    {
        using var hook = Hook();
        var shape = x.Shape();
        var outShape = shape.ToArray();
        outShape[^1] = Weight.Shape[1];
        using var flat = x.reshape(shape[..^1].Aggregate(1L, (a, d) => a * d), shape[^1]); // no -1: the input may be (N, 0)
        using var y = torch.addmm(Bias.Tensor, flat, Weight.Tensor, 1.0f, 1.0f);
        return y.view(outShape);
    }
}

/// <summary>torch.nn.Embedding: weight [num, dim].</summary>
public sealed class Embedding : HfModule
{
    public override string ClassName => "Embedding";
    public TensorSlot Weight { get; }

    public Embedding(long num, long dim) => Weight = Parameter("weight", num, dim);

    public Tensor Forward(Tensor ids)
    {
        using var hook = Hook();
        return Weight.Tensor.index_select(0, ids.reshape(-1)).view(ids.Shape().Append(Weight.Shape[1]).ToArray());
    }
}

/// <summary>RMSNorm as Llama/Mistral/Qwen2 compute it: in float32, then back to the input dtype, times weight.</summary>
public sealed class RmsNorm : HfModule
{
    private readonly string _className;
    private readonly double _eps;
    internal double Eps => _eps;
    public override string ClassName => _className;
    public TensorSlot Weight { get; }

    public RmsNorm(string className, long dim, double eps)
    {
        _className = className;
        _eps = eps;
        Weight = Parameter("weight", dim);
    }

    public Tensor Forward(Tensor x)
    {
        using var hook = Hook();
        if (DecodeKernels.RmsNormApplies(x, Weight.Tensor)) return DecodeKernels.RmsNorm(x, Weight.Tensor, _eps); // a decode step: one pass
        using var scope = NewDisposeScope();
        var inputType = x.dtype;
        var h = x.to(ScalarType.Float32);
        var variance = h.square().mean(new long[] { -1 }, keepdim: true);
        using TorchSharp.Scalar eps = _eps; // Scalars held until the calls return (an implicit conversion's temporary can be finalized mid-call: AttentionMask.Build)
        h = h * torch.rsqrt(variance + eps);
        return (Weight.Tensor * h.to(inputType)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The residual add before the norm and the norm of its result: <paramref name="sum"/> = x + delta, returns
    /// <c>Forward(sum)</c>. A decode step's rows go through one fused pass (<see cref="StepKernels.AddRmsNorm"/>).
    /// </summary>
    public Tensor ForwardAdd(Tensor x, Tensor delta, out Tensor sum)
    {
        if (StepKernels.AddRmsNormApplies(x, delta, Weight.Tensor))
        {
            using var hook = Hook();
            return StepKernels.AddRmsNorm(x, delta, Weight.Tensor, _eps, out sum);
        }
        sum = x + delta;
        return Forward(sum);
    }
}

/// <summary>torch.nn.LayerNorm with weight and bias.</summary>
public sealed class LayerNorm : HfModule
{
    private readonly double _eps;
    private readonly long _dim;
    public override string ClassName => "LayerNorm";
    public TensorSlot Weight { get; }
    public TensorSlot Bias { get; }

    public LayerNorm(long dim, double eps)
    {
        _dim = dim;
        _eps = eps;
        Weight = Parameter("weight", dim);
        Bias = Parameter("bias", dim);
    }

    public Tensor Forward(Tensor x)
    {
        using var hook = Hook();
        return nn.functional.layer_norm(x, new[] { _dim }, Weight.Tensor, Bias.Tensor, _eps);
    }
}

/// <summary>Activation functions by their HF config names (ACT2FN).</summary>
public static class Activations
{
    public static Func<Tensor, Tensor> Get(string name) => name switch
    {
        "silu" or "swish" => x => nn.functional.silu(x),
        "relu" => x => nn.functional.relu(x),
        "gelu" => x => nn.functional.gelu(x),
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => GeluTanh,
        _ => throw new UnsupportedException($"activation '{name}' is not supported"),
    };

    /// <summary>
    /// A gated MLP's <c>act(gate) * up</c> (Llama, Mistral, Qwen2, Mixtral's experts), in the dtype: for SiLU on
    /// <see cref="SiluKernels"/> where it applies (float32 and bf16 with AVX-512: each row with libtorch's values for that
    /// row alone), otherwise the activation <paramref name="act"/> (<see cref="Get"/> of <paramref name="name"/>) and
    /// libtorch's multiply.
    /// </summary>
    public static Tensor Gated(string name, Func<Tensor, Tensor> act, Tensor gate, Tensor up)
    {
        if (name is "silu" or "swish" && SiluKernels.Applies(gate, up)) return SiluKernels.SiluMul(gate, up);
        using var scope = NewDisposeScope();
        return (act(gate) * up).MoveToOuterDisposeScope();
    }

    /// <summary>The HF activation module class that ACT2FN instantiates for a name.</summary>
    public static string ClassName(string name) => name switch
    {
        "silu" or "swish" => "SiLU",
        "relu" => "ReLU",
        "gelu" => "GELUActivation",
        "gelu_new" => "NewGELUActivation",
        "gelu_pytorch_tanh" => "PytorchGELUTanh",
        "gelu_fast" => "FastGELUActivation",
        _ => name,
    };

    /// <summary>HF's NewGELUActivation, formula for formula.</summary>
    private static Tensor GeluTanh(Tensor x)
    {
        using var scope = NewDisposeScope();
        using TorchSharp.Scalar three = 3.0, c = 0.044715, root = Math.Sqrt(2.0 / Math.PI), half = 0.5, one = 1.0; // Scalars held until the calls return (an implicit conversion's temporary can be finalized mid-call: AttentionMask.Build)
        var inner = (x + x.pow(three) * c) * root;
        return (x * half * (torch.tanh(inner) + one)).MoveToOuterDisposeScope();
    }
}
