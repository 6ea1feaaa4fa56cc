using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Models;

/// <summary>
/// A Llama-family decoder block over a step of decode rows (one new position per request, or a verification's few), as
/// <see cref="LlamaDecoderLayer.Forward"/> computes it — the same kernels in the same order, so the same values bit for
/// bit — without the module scaffolding around them: no dispose scope or memory hook per module, no libtorch add, and
/// the norms, the rotary embedding, SiLU·up and the residual add written into buffers this thread keeps from step to
/// step instead of fresh tensors. The products run through <see cref="Linear"/>'s own dispatch. A decode step is dozens
/// of kernels of microseconds each with small operations between them; at one row the int4 kernels take about half of
/// a token's time and the rest is that serial work (BENCHMARKS.md, session 20).
/// Takes the step when every part would take its decode kernel in the generic path: float32 or bf16 rows on the CPU,
/// the batched decode attention (not eager), every segment a decode segment, no memory hooks, Llama's MLP with SiLU and
/// the fused SiLU·up kernel; anything else goes the generic way.
/// </summary>
public static unsafe class LlamaDecodeLayer
{
    /// <summary>Off: every step takes the generic path (benchmarks and tests compare both in one process; default on).</summary>
    public static bool Enabled { get; set; } = true;

    /// <summary>Blocks this thread ran through this path (tests check that a step took it).</summary>
    [ThreadStatic] private static long _taken;
    public static long TakenOnThisThread => _taken;

    /// <summary>This thread's buffers: the normed input of the projections, the residual sum, the attention's output, SiLU·up.</summary>
    [ThreadStatic] private static Scratch? _scratch;

    private sealed class Scratch
    {
        private readonly Tensor?[] _slots = new Tensor?[4];

        /// <summary>Slot <paramref name="i"/> as a contiguous (rows, width) tensor of <paramref name="dtype"/>, reused while its shape holds.</summary>
        public Tensor Get(int i, long rows, long width, ScalarType dtype)
        {
            var t = _slots[i];
            if (t is not null && t.dtype == dtype && t.size(0) == rows && t.size(1) == width) return t;
            t?.Dispose();
            return _slots[i] = empty(new[] { rows, width }, dtype).DetachFromDisposeScope(); // kept past the caller's scope
        }
    }

    private const int Normed = 0, Sum = 1, Attended = 2, Gated = 3;

    /// <summary>The block's output for <paramref name="x"/> (N, H), or null when the step is not one this path takes.</summary>
    internal static Tensor? TryForward(LlamaDecoderLayer layer, Tensor x, RaggedBatch batch)
    {
        if (!Enabled || layer.Mlp is not LlamaMlp mlp) return null;
        var attn = layer.SelfAttn;
        var c = attn.Settings;
        var dtype = x.dtype;
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16) || x.device_type != DeviceType.CPU || !x.is_contiguous() || x.dim() != 2
            || attn.Owner?.Attention == AttnImplementation.Eager || batch.FlatCos is not { } cos || batch.FlatSin is not { } sin
            || batch.DecodeSegments.Count != batch.Segments.Count || mlp.ActName is not ("silu" or "swish") || !SiluKernels.Enabled
            || Hooked(layer, attn, mlp))
            return null;
        long n = x.size(0), hidden = x.size(1);
        var inW = layer.InputNorm.Weight.Tensor;
        if (!DecodeKernels.RmsNormApplies(x, inW) || layer.PostNorm.Weight.Tensor is not { } postW || !StepKernels.AddRmsNormApplies(x, x, postW)) return null;
        bool bf16 = dtype == ScalarType.BFloat16;
        int d = (int)hidden, rows = (int)n;
        var scratch = _scratch ??= new Scratch();
        _taken++;

        // input_layernorm, then q, k, v in one job
        var normed = scratch.Get(Normed, n, hidden, dtype);
        StepKernels.RmsNormRows((byte*)TensorMemory.Pointer(x), (byte*)TensorMemory.Pointer(inW), (byte*)TensorMemory.Pointer(normed), bf16, d, rows, layer.InputNorm.Eps);
        var qkv = Linear.Forward(normed, attn.Q, attn.K, attn.V);
        Tensor? delta = null, gateUp0 = null, gateUp1 = null, down = null;
        try
        {
            var (q, k, v) = (qkv[0], qkv[1], qkv[2]);
            if (!StepKernels.RotaryPairApplies(q, k, cos, sin, c.HeadDim) || !DecodeAttention.Supports(q)) return null; // nothing written yet: the generic path starts over
            StepKernels.RotaryPairInPlace(q, k, cos, sin, c.HeadDim);
            var attended = scratch.Get(Attended, n, (long)c.NumHeads * c.HeadDim, dtype);
            DecodeAttention.Run(attn.Index, q, k, v, new DecodeAttention.Shape(c.NumHeads, c.NumKvHeads, c.HeadDim, 1.0 / Math.Sqrt(c.HeadDim)), batch.DecodeSegments, attended);
            delta = attn.O.Forward(attended);
            // The cache holds this step's keys now: from here on a part the kernels do not take finishes the generic way.
            if (delta.dtype != dtype || !delta.is_contiguous()) return FinishGeneric(layer, x, delta);

            // h = x + attention and post_attention_layernorm of it, in one pass; then gate and up in one job
            var sum = scratch.Get(Sum, n, hidden, dtype);
            StepKernels.AddRmsNormRows((byte*)TensorMemory.Pointer(x), (byte*)TensorMemory.Pointer(delta), (byte*)TensorMemory.Pointer(postW),
                (byte*)TensorMemory.Pointer(sum), (byte*)TensorMemory.Pointer(normed), bf16, d, rows, layer.PostNorm.Eps);
            var gateUp = Linear.Forward(normed, mlp.Gate, mlp.Up);
            (gateUp0, gateUp1) = (gateUp[0], gateUp[1]);
            if (!SiluKernels.Applies(gateUp0, gateUp1)) return FinishGeneric(layer, x, delta);
            var gated = scratch.Get(Gated, n, gateUp0.size(1), dtype);
            int gn = (int)gateUp0.NumberOfElements;
            if (bf16) SiluKernels.Bf16((ushort*)TensorMemory.Pointer(gateUp0), (ushort*)TensorMemory.Pointer(gateUp1), (ushort*)TensorMemory.Pointer(gated), gn);
            else SiluKernels.Float32((float*)TensorMemory.Pointer(gateUp0), (float*)TensorMemory.Pointer(gateUp1), (float*)TensorMemory.Pointer(gated), gn);
            down = mlp.Down.Forward(gated);
            if (down.dtype != dtype || !down.is_contiguous()) return FinishGeneric(layer, x, delta);

            // the block's output: h + mlp, in the dtype (as libtorch adds two tensors of it)
            var y = empty(new[] { n, hidden }, dtype);
            StepKernels.AddElements((byte*)TensorMemory.Pointer(sum), (byte*)TensorMemory.Pointer(down), (byte*)TensorMemory.Pointer(y), bf16, rows * d);
            return y;
        }
        finally
        {
            foreach (var t in qkv) t.Dispose();
            delta?.Dispose();
            gateUp0?.Dispose();
            gateUp1?.Dispose();
            down?.Dispose();
        }
    }

    /// <summary>Whether a memory hook watches any module of the block (then the generic path runs, which records them).</summary>
    private static bool Hooked(LlamaDecoderLayer layer, LlamaAttention attn, LlamaMlp mlp) =>
        layer.MemoryHook is not null || attn.MemoryHook is not null || mlp.MemoryHook is not null || layer.InputNorm.MemoryHook is not null
        || layer.PostNorm.MemoryHook is not null || attn.Q.MemoryHook is not null || attn.K.MemoryHook is not null || attn.V.MemoryHook is not null
        || attn.O.MemoryHook is not null || mlp.Gate.MemoryHook is not null || mlp.Up.MemoryHook is not null || mlp.Down.MemoryHook is not null
        || mlp.ActFn.MemoryHook is not null;

    /// <summary>The block's second half the generic way, from the attention's output projection <paramref name="delta"/>:
    /// for a product whose output the kernels did not make (never with them: their outputs take the input's dtype).</summary>
    private static Tensor FinishGeneric(LlamaDecoderLayer layer, Tensor x, Tensor delta)
    {
        using var scope = NewDisposeScope();
        var normed = layer.PostNorm.ForwardAdd(x, delta, out var h);
        return (h + layer.Mlp.Forward(normed)).MoveToOuterDisposeScope();
    }
}
