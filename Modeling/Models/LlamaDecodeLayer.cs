using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Models;

/// <summary>
/// A Llama-family decoder block over a step of decode rows (one new position per request, or a verification's few), as
/// <see cref="LlamaDecoderLayer.Forward"/> computes it — the same kernels in the same order, so the same values bit for
/// bit — without the scaffolding around them: no dispose scope or memory hook per module, no libtorch add, and the norms,
/// the rotary embedding, SiLU·up, the residual add and the packed (int4/int8) products written into buffers this thread
/// keeps from step to step instead of fresh tensors. A decode step is dozens of kernels of microseconds each with small
/// operations between them; at one row the int4 kernels take about half of a token's time and the serial work between
/// them most of the rest (BENCHMARKS.md, session 20). Float products run through <see cref="Linear"/>'s own dispatch.
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

    /// <summary>This thread's buffers (<see cref="Slot"/>).</summary>
    [ThreadStatic] private static Scratch? _scratch;

    private enum Slot { Normed, Sum, Attended, Gated, Q, K, V, Delta, Gate, Up, Down, Count }

    private sealed class Scratch
    {
        private readonly Tensor?[] _slots = new Tensor?[(int)Slot.Count];
        private readonly nint[] _pointers = new nint[(int)Slot.Count];

        /// <summary>Slot <paramref name="s"/> as a contiguous (rows, width) tensor of <paramref name="dtype"/>, reused while its shape holds.</summary>
        public Tensor Get(Slot s, long rows, long width, ScalarType dtype)
        {
            var t = _slots[(int)s];
            if (t is not null && t.dtype == dtype && t.size(0) == rows && t.size(1) == width) return t;
            t?.Dispose();
            t = _slots[(int)s] = empty(new[] { rows, width }, dtype).DetachFromDisposeScope(); // kept past the caller's scope
            _pointers[(int)s] = (nint)TensorMemory.Pointer(t);
            return t;
        }

        /// <summary>The data of slot <paramref name="s"/> (after <see cref="Get"/>).</summary>
        public byte* At(Slot s) => (byte*)_pointers[(int)s];
    }

    /// <summary>
    /// A block's products as the packed decode kernel takes them (<see cref="QuantKernels.DecodeRowsInto"/>): per group
    /// (q/k/v, o, gate/up, down) its packed weights and biases, or null where the group goes through <see cref="Linear"/>.
    /// Built once and kept on the block while the same weight and bias objects are in place.
    /// </summary>
    internal sealed class Plan
    {
        public required object?[] Key;
        public required Group?[] Groups;
    }

    internal sealed record Group(PackedWeight[] Weights, (nint Ptr, ScalarType Type)[] Biases);

    private static object?[] KeyOf(Linear[] all)
    {
        var key = new object?[2 * all.Length];
        for (int i = 0; i < all.Length; i++)
        {
            key[2 * i] = (object?)all[i].Quantized?.Packed ?? all[i].Weight.Tensor;
            key[2 * i + 1] = all[i].Bias?.Tensor;
        }
        return key;
    }

    private static Plan PlanOf(LlamaDecoderLayer layer, LlamaAttention attn, LlamaMlp mlp)
    {
        var groups = new[] { new[] { attn.Q, attn.K, attn.V }, new[] { attn.O }, new[] { mlp.Gate, mlp.Up }, new[] { mlp.Down } };
        var all = groups.SelectMany(g => g).ToArray();
        if (layer.DecodePlan is { } plan && SameKey(plan.Key, all)) return plan;
        var built = new Plan { Key = KeyOf(all), Groups = groups.Select(PackedGroup).ToArray() };
        layer.DecodePlan = built;
        return built;
    }

    private static bool SameKey(object?[] key, Linear[] all)
    {
        for (int i = 0; i < all.Length; i++)
            if (!ReferenceEquals(key[2 * i], (object?)all[i].Quantized?.Packed ?? all[i].Weight.Tensor) || !ReferenceEquals(key[2 * i + 1], all[i].Bias?.Tensor))
                return false;
        return true;
    }

    /// <summary>The group's packed weights when every one is packed, they share one gathered input
    /// (<see cref="QuantKernels.DecodeRowsTogether"/>) and their biases are contiguous; else null.</summary>
    private static Group? PackedGroup(Linear[] linears)
    {
        if (!linears.All(l => l.Quantized?.Packed is not null)) return null;
        var weights = linears.Select(l => l.Quantized!.Packed!).ToArray();
        if (!QuantKernels.DecodeRowsTogether(weights)) return null;
        var biases = new (nint, ScalarType)[linears.Length];
        for (int i = 0; i < linears.Length; i++)
        {
            var b = linears[i].Bias?.Tensor;
            if (b is not null && (!b.is_contiguous() || b.device_type != DeviceType.CPU)) return null;
            biases[i] = (b is null ? 0 : (nint)TensorMemory.Pointer(b), b?.dtype ?? ScalarType.Float32);
        }
        return new Group(weights, biases);
    }

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
        var plan = PlanOf(layer, attn, mlp);
        _taken++;
        var owned = new List<Tensor>(4); // products the generic dispatch made: disposed at the end

        try
        {
            // input_layernorm, then q, k, v in one job
            var normed = scratch.Get(Slot.Normed, n, hidden, dtype);
            StepKernels.RmsNormRows((byte*)TensorMemory.Pointer(x), (byte*)TensorMemory.Pointer(inW), scratch.At(Slot.Normed), bf16, d, rows, layer.InputNorm.Eps);
            var qkv = Products(plan.Groups[0], normed, rows, dtype, new[] { attn.Q, attn.K, attn.V }, scratch, new[] { Slot.Q, Slot.K, Slot.V }, owned);
            var (q, k, v) = (qkv[0], qkv[1], qkv[2]);
            if (!StepKernels.RotaryPairApplies(q, k, cos, sin, c.HeadDim) || !DecodeAttention.Supports(q)) return null; // nothing written yet: the generic path starts over
            StepKernels.RotaryPairInPlace(q, k, cos, sin, c.HeadDim);
            var attended = scratch.Get(Slot.Attended, n, (long)c.NumHeads * c.HeadDim, dtype);
            DecodeAttention.Run(attn.Index, q, k, v, new DecodeAttention.Shape(c.NumHeads, c.NumKvHeads, c.HeadDim, 1.0 / Math.Sqrt(c.HeadDim)), batch.DecodeSegments, attended);
            var delta = Products(plan.Groups[1], attended, rows, dtype, new[] { attn.O }, scratch, new[] { Slot.Delta }, owned)[0];
            // The cache holds this step's keys now: from here on a part the kernels do not take finishes the generic way.
            if (delta.dtype != dtype || !delta.is_contiguous()) return FinishGeneric(layer, x, delta);

            // h = x + attention and post_attention_layernorm of it, in one pass; then gate and up in one job
            scratch.Get(Slot.Sum, n, hidden, dtype);
            StepKernels.AddRmsNormRows((byte*)TensorMemory.Pointer(x), (byte*)TensorMemory.Pointer(delta), (byte*)TensorMemory.Pointer(postW),
                scratch.At(Slot.Sum), scratch.At(Slot.Normed), bf16, d, rows, layer.PostNorm.Eps);
            var gateUp = Products(plan.Groups[2], normed, rows, dtype, new[] { mlp.Gate, mlp.Up }, scratch, new[] { Slot.Gate, Slot.Up }, owned);
            if (!SiluKernels.Applies(gateUp[0], gateUp[1])) return FinishGeneric(layer, x, delta);
            var gated = scratch.Get(Slot.Gated, n, gateUp[0].size(1), dtype);
            int gn = (int)gateUp[0].NumberOfElements;
            if (bf16) SiluKernels.Bf16((ushort*)TensorMemory.Pointer(gateUp[0]), (ushort*)TensorMemory.Pointer(gateUp[1]), (ushort*)scratch.At(Slot.Gated), gn);
            else SiluKernels.Float32((float*)TensorMemory.Pointer(gateUp[0]), (float*)TensorMemory.Pointer(gateUp[1]), (float*)scratch.At(Slot.Gated), gn);
            var down = Products(plan.Groups[3], gated, rows, dtype, new[] { mlp.Down }, scratch, new[] { Slot.Down }, owned)[0];
            if (down.dtype != dtype || !down.is_contiguous()) return FinishGeneric(layer, x, delta);

            // the block's output: h + mlp, in the dtype (as libtorch adds two tensors of it)
            var y = empty(new[] { n, hidden }, dtype);
            StepKernels.AddElements(scratch.At(Slot.Sum), (byte*)TensorMemory.Pointer(down), (byte*)TensorMemory.Pointer(y), bf16, rows * d);
            return y;
        }
        finally
        {
            foreach (var t in owned) t.Dispose();
        }
    }

    /// <summary>
    /// A group's outputs for <paramref name="input"/> (<paramref name="rows"/> contiguous rows): into this thread's
    /// <paramref name="slots"/> through the packed decode kernel when the plan has the group, else <see cref="Linear"/>'s
    /// dispatch (its tensors, added to <paramref name="owned"/>). The values are the same either way.
    /// </summary>
    private static Tensor[] Products(Group? group, Tensor input, int rows, ScalarType dtype, Linear[] linears, Scratch scratch, Slot[] slots, List<Tensor> owned)
    {
        if (group is not null && rows < QuantKernels.DenseRows && (rows == 1 || QuantKernels.ManyRowsEnabled))
        {
            var outputs = new Tensor[linears.Length];
            var at = new nint[linears.Length];
            for (int i = 0; i < linears.Length; i++)
            {
                outputs[i] = scratch.Get(slots[i], rows, group.Weights[i].Out, dtype);
                at[i] = (nint)scratch.At(slots[i]);
            }
            QuantKernels.DecodeRowsInto((byte*)TensorMemory.Pointer(input), dtype, rows, group.Weights, group.Biases, at);
            return outputs;
        }
        var made = linears.Length == 1 ? new[] { linears[0].Forward(input) } : Linear.Forward(input, linears);
        owned.AddRange(made);
        return made;
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
