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
/// the rotary embedding, SiLU·up, the residual add and the products (packed, bf16, float32) written into buffers this
/// thread keeps from step to step instead of fresh tensors. A decode step is dozens of kernels of microseconds each with
/// small operations between them; at one row the int4 kernels take about half of a token's time and the serial work
/// between them most of the rest (BENCHMARKS.md, session 20). A product group no kernel of ours takes for the step goes
/// through <see cref="Linear"/>'s own dispatch (its fresh tensors). Takes the step when every part would take its decode kernel in the generic path: float32 or bf16 rows on the CPU,
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

    /// <summary>The output slots of each product group, in the plan's order (q/k/v, o, gate/up, down).</summary>
    private static readonly Slot[][] GroupSlots = { new[] { Slot.Q, Slot.K, Slot.V }, new[] { Slot.Delta }, new[] { Slot.Gate, Slot.Up }, new[] { Slot.Down } };

    private sealed class Scratch
    {
        private readonly Tensor?[] _slots = new Tensor?[(int)Slot.Count];
        private readonly (long Rows, long Width, ScalarType Type, nint At)[] _shapes = new (long, long, ScalarType, nint)[(int)Slot.Count];

        /// <summary>Slot <paramref name="s"/> as a contiguous (rows, width) tensor of <paramref name="dtype"/>, reused while its shape
        /// holds (the shape kept here: no native call to look).</summary>
        public Tensor Get(Slot s, long rows, long width, ScalarType dtype)
        {
            var t = _slots[(int)s];
            var (r, w, type, _) = _shapes[(int)s];
            if (t is not null && type == dtype && r == rows && w == width) return t;
            t?.Dispose();
            t = _slots[(int)s] = empty(new[] { rows, width }, dtype).DetachFromDisposeScope(); // kept past the caller's scope
            _shapes[(int)s] = (rows, width, dtype, (nint)TensorMemory.Pointer(t));
            return t;
        }

        /// <summary>The data of slot <paramref name="s"/> (after <see cref="Get"/>).</summary>
        public byte* At(Slot s) => (byte*)_shapes[(int)s].At;
    }

    /// <summary>
    /// How a block's products run into the buffers: per group (q/k/v, o, gate/up, down) a <see cref="Group"/>, or null where
    /// the group goes through <see cref="Linear"/>; and the norms' weights. Built once and kept on the block while the same
    /// weight and bias objects are in place (an offloaded block's are new ones each time it is read in: a new plan).
    /// </summary>
    internal sealed class Plan
    {
        public required object?[] Key;
        /// <summary>The products of each group (q/k/v, o, gate/up, down), what <see cref="Groups"/> runs or <see cref="Linear"/> dispatches.</summary>
        public required Linear[][] Linears;
        public required Group?[] Groups;
        /// <summary>The norms' weights (their tensors are part of the key), each contiguous, one-dimensional, on the CPU.</summary>
        public required nint InputNorm, PostNorm;
        public required ScalarType NormType;
        public required long NormWidth;
        /// <summary>False: the norms' weights do not suit the kernels (the block always goes the generic way).</summary>
        public bool Usable = true;
    }

    /// <summary>A group of a block's products (q/k/v, o, gate/up, down) that one kernel job runs into the thread's buffers.</summary>
    internal abstract class Group
    {
        /// <summary>Each product's outputs per row.</summary>
        public required int[] Outs;
        /// <summary>Whether the generic dispatch would take this group's kernel for <paramref name="rows"/> rows of <paramref name="dtype"/>.</summary>
        public abstract bool Takes(ScalarType dtype, int rows);
        public abstract void Run(byte* input, ScalarType dtype, int rows, nint[] outputs);
    }

    /// <summary>Packed weights of one gathered input (<see cref="QuantKernels.DecodeRowsTogether"/>): <see cref="QuantKernels.DecodeRowsJob"/>.</summary>
    private sealed class PackedProducts : Group
    {
        public required QuantKernels.DecodeRowsJob Job;
        public override bool Takes(ScalarType dtype, int rows) => rows < QuantKernels.DenseRows && (rows == 1 || QuantKernels.ManyRowsEnabled);
        public override void Run(byte* input, ScalarType dtype, int rows, nint[] outputs) => Job.Run(input, dtype, rows, outputs);
    }

    /// <summary>bf16 or float32 weights (contiguous, on the CPU, biases of their dtype): <see cref="DecodeKernels.LinearsBf16Into"/>, <see cref="Fp32Kernels.LinearsInto"/>.</summary>
    private sealed class DenseProducts : Group
    {
        public required ScalarType Type;
        public required int In;
        public required nint[] Weights, Biases;
        public override bool Takes(ScalarType dtype, int rows) =>
            dtype == Type && (Type == ScalarType.BFloat16 ? DecodeKernels.TakesRows(rows) : Fp32Kernels.TakesRows(rows));
        public override void Run(byte* input, ScalarType dtype, int rows, nint[] outputs)
        {
            if (Type == ScalarType.BFloat16) DecodeKernels.LinearsBf16Into((ushort*)input, rows, In, Weights, Outs, Biases, outputs);
            else Fp32Kernels.LinearsInto((float*)input, rows, In, Weights, Outs, Biases, outputs, portable: !System.Runtime.Intrinsics.X86.Avx512F.IsSupported);
        }
    }

    /// <summary>
    /// The objects a plan is made from, in one order: each product's weight (packed or float) and bias, then the two norms'
    /// weights. <paramref name="fill"/>: written into <paramref name="key"/>; else compared with it (true: all the same).
    /// </summary>
    private static bool Key(object?[] key, bool fill, LlamaDecoderLayer layer, LlamaAttention attn, LlamaMlp mlp)
    {
        int i = 0;
        bool Part(object? o)
        {
            if (!fill) return ReferenceEquals(key[i++], o);
            key[i++] = o;
            return true;
        }
        bool Product(Linear l) => Part((object?)l.Quantized?.Packed ?? l.Weight.Tensor) & Part(l.Bias?.Tensor);
        return Product(attn.Q) && Product(attn.K) && Product(attn.V) && Product(attn.O) && Product(mlp.Gate) && Product(mlp.Up) && Product(mlp.Down)
            && Part(layer.InputNorm.Weight.Tensor) && Part(layer.PostNorm.Weight.Tensor);
    }

    private const int KeyLength = 2 * 7 + 2;

    /// <summary>The block's plan, made again when a weight object changed; null when its norms' weights do not suit the kernels.</summary>
    private static Plan? PlanOf(LlamaDecoderLayer layer, LlamaAttention attn, LlamaMlp mlp)
    {
        if (layer.DecodePlan is { } plan && Key(plan.Key, fill: false, layer, attn, mlp)) return plan.Usable ? plan : null;
        var key = new object?[KeyLength];
        Key(key, fill: true, layer, attn, mlp);
        var linears = new[] { new[] { attn.Q, attn.K, attn.V }, new[] { attn.O }, new[] { mlp.Gate, mlp.Up }, new[] { mlp.Down } };
        Tensor inW = layer.InputNorm.Weight.Tensor, postW = layer.PostNorm.Weight.Tensor;
        bool Norm(Tensor w) => w.device_type == DeviceType.CPU && w.is_contiguous() && w.dim() == 1 && w.dtype == inW.dtype && w.size(0) == inW.size(0);
        if (!Norm(inW) || !Norm(postW))
        {
            layer.DecodePlan = new Plan { Key = key, Linears = linears, Groups = Array.Empty<Group?>(), InputNorm = 0, PostNorm = 0, NormType = inW.dtype, NormWidth = 0, Usable = false };
            return null;
        }
        var c = attn.Settings;
        long hidden = inW.size(0), heads = (long)c.NumHeads * c.HeadDim, inter = mlp.Down.Quantized?.Packed?.In ?? mlp.Down.Weight.Shape[1];
        var inputs = new[] { hidden, heads, hidden, inter };
        var built = new Plan
        {
            Key = key, Linears = linears, Groups = linears.Select((g, i) => GroupOf(g, (int)inputs[i])).ToArray(),
            InputNorm = (nint)TensorMemory.Pointer(inW), PostNorm = (nint)TensorMemory.Pointer(postW), NormType = inW.dtype, NormWidth = inW.size(0),
        };
        layer.DecodePlan = built;
        return built;
    }

    /// <summary>Whether the step's rotary tables suit the kernel (<see cref="StepKernels.RotaryPairApplies"/> for tables), kept
    /// for the last batch this thread saw: every block of a step has the same.</summary>
    [ThreadStatic] private static (RaggedBatch? Batch, ScalarType Type, int HeadDim, bool Fits) _tables;

    private static bool TablesFit(RaggedBatch batch, Tensor cos, Tensor sin, ScalarType dtype, int headDim, long n)
    {
        var (b, type, hd, fits) = _tables;
        if (ReferenceEquals(b, batch) && type == dtype && hd == headDim) return fits;
        long[] cs = cos.Shape(), ss = sin.Shape();
        fits = headDim > 0 && headDim % 2 == 0 && cos.dtype == dtype && sin.dtype == dtype && cos.device_type == DeviceType.CPU && sin.device_type == DeviceType.CPU
            && cs.Length == 3 && ss.Length == 3 && cs[0] == n && cs[1] == 1 && cs[2] == headDim && ss[0] == n && ss[1] == 1 && ss[2] == headDim
            && cos.is_contiguous() && sin.is_contiguous();
        _tables = (batch, dtype, headDim, fits);
        return fits;
    }

    /// <summary>
    /// How a group's products run into the buffers: packed weights that share one gathered input and have contiguous
    /// biases (<see cref="PackedProducts"/>); bf16 or float32 weights, each contiguous and two-dimensional on the CPU with
    /// biases of their dtype (<see cref="DenseProducts"/>); else null (<see cref="Linear"/>'s dispatch, fresh tensors).
    /// </summary>
    private static Group? GroupOf(Linear[] linears, int inputs)
    {
        var biases = new nint[linears.Length];
        var biasTypes = new ScalarType[linears.Length];
        for (int i = 0; i < linears.Length; i++)
        {
            var b = linears[i].Bias?.Tensor;
            if (b is not null && (!b.is_contiguous() || b.device_type != DeviceType.CPU)) return null;
            biases[i] = b is null ? 0 : (nint)TensorMemory.Pointer(b);
            biasTypes[i] = b?.dtype ?? ScalarType.Float32;
        }
        if (linears.All(l => l.Quantized?.Packed is not null))
        {
            var packed = linears.Select(l => l.Quantized!.Packed!).ToArray();
            if (packed.Any(w => w.In != inputs) || !QuantKernels.DecodeRowsTogether(packed)) return null;
            return new PackedProducts
            {
                Outs = packed.Select(w => w.Out).ToArray(),
                Job = new QuantKernels.DecodeRowsJob(packed, biases.Select((p, i) => (p, biasTypes[i])).ToArray()),
            };
        }
        if (linears.Any(l => l.Quantized is not null)) return null;
        var weights = linears.Select(l => l.Weight.Tensor).ToArray();
        var type = weights[0].dtype;
        if (type is not (ScalarType.BFloat16 or ScalarType.Float32)) return null;
        for (int i = 0; i < weights.Length; i++)
        {
            var w = weights[i];
            if (w.dtype != type || w.device_type != DeviceType.CPU || !w.is_contiguous() || w.dim() != 2 || w.size(1) != inputs || w.size(0) < 1
                || biases[i] != 0 && biasTypes[i] != type) return null;
        }
        return new DenseProducts
        {
            Type = type, In = inputs, Outs = weights.Select(w => (int)w.size(0)).ToArray(),
            Weights = weights.Select(w => (nint)TensorMemory.Pointer(w)).ToArray(), Biases = biases,
        };
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
        if (n < 1 || n > StepKernels.MaxRows || PlanOf(layer, attn, mlp) is not { } plan || plan.NormType != dtype || plan.NormWidth != hidden
            || !TablesFit(batch, cos, sin, dtype, c.HeadDim, n))
            return null;
        bool bf16 = dtype == ScalarType.BFloat16;
        int d = (int)hidden, rows = (int)n;
        var scratch = _scratch ??= new Scratch();
        _taken++;
        var owned = new List<Tensor>(4); // products the generic dispatch made: disposed at the end

        try
        {
            // input_layernorm, then q, k, v in one job
            var normed = scratch.Get(Slot.Normed, n, hidden, dtype);
            byte* xp = (byte*)TensorMemory.Pointer(x);
            StepKernels.RmsNormRows(xp, (byte*)plan.InputNorm, scratch.At(Slot.Normed), bf16, d, rows, layer.InputNorm.Eps);
            var qkv = Products(plan, 0, normed, scratch.At(Slot.Normed), rows, dtype, scratch, owned, out bool ownQkv);
            var (q, k, v) = (qkv[0], qkv[1], qkv[2]);
            if (!ownQkv && (!StepKernels.RotaryPairApplies(q, k, cos, sin, c.HeadDim) || !DecodeAttention.Supports(q)))
                return null; // nothing written yet: the generic path starts over (the buffers' own products suit both)
            StepKernels.RotaryPairInPlace(q, k, cos, sin, c.HeadDim);
            var attended = scratch.Get(Slot.Attended, n, (long)c.NumHeads * c.HeadDim, dtype);
            DecodeAttention.Run(attn.Index, q, k, v, new DecodeAttention.Shape(c.NumHeads, c.NumKvHeads, c.HeadDim, 1.0 / Math.Sqrt(c.HeadDim)), batch.DecodeSegments, attended);
            var delta = Products(plan, 1, attended, scratch.At(Slot.Attended), rows, dtype, scratch, owned, out bool ownDelta)[0];
            // The cache holds this step's keys now: from here on a part the kernels do not take finishes the generic way.
            if (!ownDelta && (delta.dtype != dtype || !delta.is_contiguous())) return FinishGeneric(layer, x, delta);
            byte* deltaAt = ownDelta ? scratch.At(Slot.Delta) : (byte*)TensorMemory.Pointer(delta);

            // h = x + attention and post_attention_layernorm of it, in one pass; then gate and up in one job
            scratch.Get(Slot.Sum, n, hidden, dtype);
            StepKernels.AddRmsNormRows(xp, deltaAt, (byte*)plan.PostNorm, scratch.At(Slot.Sum), scratch.At(Slot.Normed), bf16, d, rows, layer.PostNorm.Eps);
            var gateUp = Products(plan, 2, normed, scratch.At(Slot.Normed), rows, dtype, scratch, owned, out bool ownGateUp);
            long inter = ownGateUp ? plan.Groups[2]!.Outs[0] : gateUp[0].size(1);
            if (ownGateUp ? plan.Groups[2]!.Outs[1] != inter || !SiluKernels.AppliesTo(n * inter) : !SiluKernels.Applies(gateUp[0], gateUp[1]))
                return FinishGeneric(layer, x, delta);
            var gated = scratch.Get(Slot.Gated, n, inter, dtype);
            byte* g = ownGateUp ? scratch.At(Slot.Gate) : (byte*)TensorMemory.Pointer(gateUp[0]), u = ownGateUp ? scratch.At(Slot.Up) : (byte*)TensorMemory.Pointer(gateUp[1]);
            SiluKernels.Rows(bf16, g, u, scratch.At(Slot.Gated), rows, (int)inter);
            var down = Products(plan, 3, gated, scratch.At(Slot.Gated), rows, dtype, scratch, owned, out bool ownDown)[0];
            if (!ownDown && (down.dtype != dtype || !down.is_contiguous())) return FinishGeneric(layer, x, delta);

            // the block's output: h + mlp, in the dtype (as libtorch adds two tensors of it)
            var y = empty(new[] { n, hidden }, dtype);
            StepKernels.AddElements(scratch.At(Slot.Sum), ownDown ? scratch.At(Slot.Down) : (byte*)TensorMemory.Pointer(down), (byte*)TensorMemory.Pointer(y), bf16, rows * d);
            return y;
        }
        finally
        {
            foreach (var t in owned) t.Dispose();
        }
    }

    /// <summary>
    /// Group <paramref name="g"/>'s outputs for <paramref name="input"/> (<paramref name="rows"/> contiguous rows at
    /// <paramref name="inputAt"/>): into this thread's slots (<see cref="GroupSlots"/>) through the plan's <see cref="Group"/>
    /// when it takes the step (<paramref name="buffered"/>), else <see cref="Linear"/>'s dispatch (its tensors, added to
    /// <paramref name="owned"/>). The values are the same either way.
    /// </summary>
    private static Tensor[] Products(Plan plan, int g, Tensor input, byte* inputAt, int rows, ScalarType dtype, Scratch scratch, List<Tensor> owned, out bool buffered)
    {
        var linears = plan.Linears[g];
        if (plan.Groups[g] is { } group && group.Takes(dtype, rows))
        {
            buffered = true;
            var slots = GroupSlots[g];
            var outputs = new Tensor[linears.Length];
            var at = new nint[linears.Length];
            for (int i = 0; i < linears.Length; i++)
            {
                outputs[i] = scratch.Get(slots[i], rows, group.Outs[i], dtype);
                at[i] = (nint)scratch.At(slots[i]);
            }
            group.Run(inputAt, dtype, rows, at);
            return outputs;
        }
        buffered = false;
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
