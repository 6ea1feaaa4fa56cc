using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ShardPipe.Modeling.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// Matrix-vector products for decoding with float32 weights, the float32 sibling of <see cref="DecodeKernels.LinearBf16"/>.
/// A decode step reads every weight once, so its speed is the speed of reading weights; on libtorch's (MKL's) float32
/// GEMV, fp32 decode read ≈ 17 GB/s of weights where the bf16 kernel reads ≈ 24 (BENCHMARKS.md, vs-llamacpp, session 8
/// idle rerun: 0.78× llama.cpp F32 against 1.36× F16). Here one input row reads each weight row front to back with the next 4 KB prefetched, and the rows
/// are split over <see cref="SpinPool"/>'s helper threads. AVX-512 where the CPU has it, <see cref="Vector{T}"/> otherwise.
/// Several input rows (up to <see cref="MaxRows"/>) take the register-blocked kernel of Fp32MultiRow.cs; longer inputs
/// (prefill, the prompts of many arriving streams as one merged step) take it in passes of at most <see cref="MaxRows"/>
/// rows (<see cref="Fp32LongInputs"/>; off: libtorch's GEMM, as before session 12).
/// </summary>
public static unsafe partial class Fp32Kernels
{
    /// <summary>Inputs of at most this many rows take the kernel in one pass (a decode step, a speculative verification pass,
    /// a merged serving step, a short prefill chunk); longer ones in passes of at most this many (<see cref="Fp32LongInputs"/>). Measured with <c>bench decode --micro</c> on
    /// this machine (BENCHMARKS.md, session 10; one thread a side, the 134M Llama's four Linear shapes): ours 1.50× libtorch
    /// at 64 rows (every shape ≥ 1.34×), 1.92× at 128, 0.95× at 512 (the 32000-row head loses); 64 keeps the x rows of a
    /// register block's pass (64 × 2048 floats, 512 KB) inside L2. Its own limit: <see cref="DecodeKernels.MaxRows"/> is the bf16 kernel's.</summary>
    public const int MaxRows = 64;

    /// <summary>Whether the portable path is worth taking where AVX-512 is missing: a hardware-accelerated Vector&lt;float&gt; of at least 8 lanes.</summary>
    private static readonly bool Accelerated = Avx512F.IsSupported || (Vector.IsHardwareAccelerated && Vector<float>.Count >= 8);

    /// <summary>Off: every float32 layer goes to libtorch (benchmarks compare both in one run; default on).</summary>
    public static bool Enabled { get; set; } = true;

    /// <summary>Whether <see cref="Linear"/> applies: float32 weight and input on CPU, few rows, contiguous 2-D weight, a vector unit.</summary>
    public static bool Applies(Tensor x, Tensor weight) =>
        weight.dtype == ScalarType.Float32 && x.dtype == ScalarType.Float32 && weight.dim() == 2
        && weight.device_type == DeviceType.CPU && x.device_type == DeviceType.CPU && weight.is_contiguous()
        && x.Shape()[^1] == weight.Shape()[1] && weight.Shape()[1] > 0 && x.NumberOfElements > 0
        && TakesRows(x.NumberOfElements / weight.Shape()[1]);

    /// <summary>The part of <see cref="Applies"/> that depends on the machine, the settings and the input's row count.</summary>
    internal static bool TakesRows(long m) => Enabled && Accelerated && m > 0 && (Fp32LongInputs.Enabled || m <= MaxRows);

    /// <summary><c>F.linear(x, weight, bias)</c> for float32: (…, K) × (N, K)ᵀ → (…, N), written straight into the output tensor.</summary>
    public static Tensor Linear(Tensor x, Tensor weight, Tensor? bias) => Linear(x, weight, bias, portable: !Avx512F.IsSupported);

    /// <summary>As <see cref="Linear(Tensor, Tensor, Tensor?)"/>, choosing the path: <paramref name="portable"/> runs the
    /// <see cref="Vector{T}"/> code even on an AVX-512 CPU (tests check both paths on one machine).</summary>
    public static Tensor Linear(Tensor x, Tensor weight, Tensor? bias, bool portable) => Linears(x, new[] { weight }, new[] { bias }, portable)[0];


    /// <summary>
    /// Several float32 Linears of one input — a layer's q, k and v, an MLP's gate and up — as one job of the
    /// <see cref="SpinPool"/> (as <see cref="DecodeKernels.LinearsBf16"/> does for bf16): the output rows of all the weights
    /// cut into one set of parts, one hand-over to the helpers instead of one per weight. Each output equals
    /// <see cref="Linear(Tensor, Tensor, Tensor?)"/> of its weight bit for bit (every row's sum has one order, whichever
    /// part computes it). Every weight must pass <see cref="Applies"/> with <paramref name="x"/>.
    /// </summary>
    public static Tensor[] Linears(Tensor x, IReadOnlyList<Tensor> weights, IReadOnlyList<Tensor?> biases) => Linears(x, weights, biases, portable: !Avx512F.IsSupported);

    /// <summary>As <see cref="Linears(Tensor, IReadOnlyList{Tensor}, IReadOnlyList{Tensor?})"/>, choosing the path (as
    /// <see cref="Linear(Tensor, Tensor, Tensor?, bool)"/>, which is this for one weight).</summary>
    private static Tensor[] Linears(Tensor x, IReadOnlyList<Tensor> weights, IReadOnlyList<Tensor?> biases, bool portable)
    {
        if (weights.Count == 0 || biases.Count != weights.Count) throw new ArgumentException("one bias (or null) per weight, at least one weight");
        long[] shape = x.Shape();
        int k = (int)shape[^1], m = (int)(x.NumberOfElements / k), count = weights.Count;
        var ws = new nint[count];
        var ns = new int[count];
        var bs = new nint[count];
        var outs = new nint[count];
        var outputs = new Tensor[count];
        var converted = new List<Tensor>();
        var input = x.is_contiguous() ? x : x.contiguous();
        try
        {
            for (int i = 0; i < count; i++)
            {
                int n = (int)weights[i].size(0);
                if (weights[i].size(1) != k) throw new ArgumentException($"weight {i} takes {weights[i].size(1)} inputs, not {k}");
                shape[^1] = n;
                outputs[i] = empty(shape, ScalarType.Float32);
                var bias = biases[i];
                var b = bias is null ? null : bias.dtype == ScalarType.Float32 && bias.is_contiguous() ? bias : bias.to(ScalarType.Float32).contiguous();
                if (b is not null && !ReferenceEquals(b, bias)) converted.Add(b);
                (ws[i], ns[i], bs[i], outs[i]) = ((nint)TensorMemory.Pointer(weights[i]), n, b is null ? 0 : (nint)TensorMemory.Pointer(b), (nint)TensorMemory.Pointer(outputs[i]));
            }
            LinearsInto((float*)TensorMemory.Pointer(input), m, k, ws, ns, bs, outs, portable);
        }
        finally
        {
            if (!ReferenceEquals(input, x)) input.Dispose();
            foreach (var b in converted) b.Dispose();
        }
        return outputs;
    }

    /// <summary>
    /// <see cref="Linears(Tensor, IReadOnlyList{Tensor}, IReadOnlyList{Tensor?})"/> at pointers: <paramref name="m"/> contiguous
    /// float32 input rows of <paramref name="k"/>; weight i (contiguous, <paramref name="ns"/>[i] × k) at
    /// <paramref name="weights"/>[i], its contiguous float32 bias or 0, its (m, ns[i]) outputs at <paramref name="outputs"/>[i].
    /// The decode layer (<c>LlamaDecodeLayer</c>) writes into buffers it keeps; the tensor form allocates them.
    /// </summary>
    internal static void LinearsInto(float* x, int m, int k, IReadOnlyList<nint> weights, IReadOnlyList<int> ns, IReadOnlyList<nint> biases, IReadOnlyList<nint> outputs, bool portable)
    {
        int count = weights.Count;
        var offsets = new int[count + 1]; // weight i's rows are rows [offsets[i], offsets[i + 1]) of the job
        for (int i = 0; i < count; i++) offsets[i + 1] = offsets[i] + ns[i];
        long job = NewJob(); // the parts of this job on one thread pack its input rows once (PackedInputs)
        DecodeKernels.RunWeights(offsets, (i, lo, hi) => RowsOf((float*)weights[i], x, (float*)outputs[i], (float*)biases[i], k, ns[i], m, lo, hi, portable, job));
        // no WeightPrefetch: float32 weights outgrow L2, and it measured no gain (BENCHMARKS.md, session 15)
    }


    /// <summary>Output columns [from, to) of all <paramref name="m"/> input rows (row-major, <paramref name="k"/> wide;
    /// outputs <paramref name="n"/> wide) on the calling thread: one row takes the matrix-vector kernel below, several the
    /// few-row kernel (Fp32FewRows.cs: up to <see cref="FewRows"/> rows that fit L1, <see cref="FewRowsFit"/>) or the
    /// register-blocked one (Fp32MultiRow.cs), which read each weight once for all of them,
    /// more than <see cref="MaxRows"/> passes of them (<see cref="Fp32LongInputs"/>). The path
    /// <see cref="Linear(Tensor, Tensor, Tensor?)"/> takes for each part, and the one <see cref="Fp32LongInputs"/>' passes and
    /// the quantized many-row path's dequantized tiles take.</summary>
    internal static void RowsOf(float* w, float* x, float* y, float* bias, int k, int n, int m, int from, int to, bool portable, long job = 0, float* input = null, int inputRows = 0)
    {
        if (m > MaxRows) Fp32LongInputs.Passes(w, x, y, bias, k, n, m, from, to, portable, job);
        else if (!portable && FewRowsFit(m, k)) FewRowsPass(w, x, y, bias, k, n, m, from, to); // FewRowsFit: 2..FewRows rows
        else if (m > 1) MultiRows(w, x, y, bias, k, n, m, from, to, portable, job, input == null ? x : input, input == null ? m : inputRows);
        else if (portable) PortableRows(w, x, y, bias, k, from, to);
        else Fp32Rows(w, x, y, bias, k, from, to);
    }

    /// <summary>Jobs numbered so far (<see cref="NewJob"/>: each <see cref="LinearsInto"/> call, each quantized many-row
    /// product): a job's number tells its parts' packed input rows apart (<see cref="PackedInputs"/>).</summary>
    private static long _jobs;

    /// <summary>A new job number for <see cref="RowsOf"/>: calls with the same number and input share a thread's packed input rows.</summary>
    internal static long NewJob() => Interlocked.Increment(ref _jobs);

    /// <summary>Elements ahead of the current position to prefetch in each row (4 KB), as the bf16 kernel does: the
    /// hardware prefetcher alone keeps too few lines in flight to reach DRAM bandwidth on two cores.</summary>
    private const int PrefetchAhead = 1024;

    /// <summary>
    /// y[o] = Σᵢ W[o, i]·x[i] (+ bias[o]) for rows [from, to) of a row-major float32 W with <paramref name="cols"/> columns;
    /// AVX-512. One row at a time, front to back (one sequential stream per thread, as the bf16 kernel reads): four rows
    /// in lock-step read ≈ 5–8 % slower from memory here (session 12, alternating runs over the 134M Llama's layer shapes).
    /// Each row's sum is the one every AVX-512 float32 path computes for it (<see cref="RowSum"/>'s order): one
    /// accumulator over the 16-float chunks, the register-blocked kernel's reduction, the scalar tail, the bias — so a
    /// row's bits do not depend on how many rows its input has (one, a verification pass, a merged step, a prefill) or
    /// on the split between threads.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Fp32Rows(float* w, float* x, float* y, float* bias, int cols, int from, int to)
    {
        for (int o = from; o < to; o++)
        {
            float* r = w + (long)o * cols;
            var a = Vector512<float>.Zero;
            int i = 0;
            for (; i + 64 <= cols; i += 64)
            {
                Sse.Prefetch0(r + i + PrefetchAhead); // past a row's end this reaches the next rows: still ahead of use
                Sse.Prefetch0(r + i + PrefetchAhead + 16);
                Sse.Prefetch0(r + i + PrefetchAhead + 32);
                Sse.Prefetch0(r + i + PrefetchAhead + 48);
                a = Vector512.FusedMultiplyAdd(Vector512.Load(r + i), Vector512.Load(x + i), a);
                a = Vector512.FusedMultiplyAdd(Vector512.Load(r + i + 16), Vector512.Load(x + i + 16), a);
                a = Vector512.FusedMultiplyAdd(Vector512.Load(r + i + 32), Vector512.Load(x + i + 32), a);
                a = Vector512.FusedMultiplyAdd(Vector512.Load(r + i + 48), Vector512.Load(x + i + 48), a);
            }
            for (; i + 16 <= cols; i += 16) a = Vector512.FusedMultiplyAdd(Vector512.Load(r + i), Vector512.Load(x + i), a);
            y[o] = RowSum(Sums(a, a, a, a).ToScalar(), r, x, bias == null ? null : bias + o, cols, i);
        }
    }

    /// <summary>
    /// The end of one float32 dot product on every path (<see cref="FinishFour"/> ends four with it): <paramref name="s"/>
    /// is the accumulator's reduction (on AVX-512 <see cref="Sums"/>: lanes i and i + 8 added, then pairwise), then the
    /// columns from <paramref name="i"/> past the last full vector one at a time, then the bias.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float RowSum(float s, float* w, float* x, float* bias, int cols, int i)
    {
        for (; i < cols; i++) s += w[i] * x[i];
        return bias != null ? s + bias[0] : s;
    }

    /// <summary>The same product with <see cref="Vector{T}"/> (the CPU's preferred width) and prefetch where SSE exists: the path for CPUs without AVX-512.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PortableRows(float* w, float* x, float* y, float* bias, int cols, int from, int to)
    {
        int width = Vector<float>.Count;
        bool prefetch = Sse.IsSupported;
        int o = from;
        for (; o + 4 <= to; o += 4)
        {
            float* r0 = w + (long)o * cols, r1 = r0 + cols, r2 = r1 + cols, r3 = r2 + cols;
            var a0 = Vector<float>.Zero;
            var a1 = a0;
            var a2 = a0;
            var a3 = a0;
            int i = 0;
            for (; i + width <= cols; i += width)
            {
                if (prefetch && (i & 15) == 0)
                {
                    Sse.Prefetch0(r0 + i + PrefetchAhead);
                    Sse.Prefetch0(r1 + i + PrefetchAhead);
                    Sse.Prefetch0(r2 + i + PrefetchAhead);
                    Sse.Prefetch0(r3 + i + PrefetchAhead);
                }
                var xv = Vector.Load(x + i);
                a0 = Vector.FusedMultiplyAdd(Vector.Load(r0 + i), xv, a0);
                a1 = Vector.FusedMultiplyAdd(Vector.Load(r1 + i), xv, a1);
                a2 = Vector.FusedMultiplyAdd(Vector.Load(r2 + i), xv, a2);
                a3 = Vector.FusedMultiplyAdd(Vector.Load(r3 + i), xv, a3);
            }
            FinishFour(Vector.Sum(a0), Vector.Sum(a1), Vector.Sum(a2), Vector.Sum(a3), r0, x, y, bias, cols, o, i);
        }
        for (; o < to; o++)
        {
            float* r = w + (long)o * cols;
            var a = Vector<float>.Zero;
            int i = 0;
            for (; i + width <= cols; i += width) a = Vector.FusedMultiplyAdd(Vector.Load(r + i), Vector.Load(x + i), a);
            y[o] = RowSum(Vector.Sum(a), r, x, bias == null ? null : bias + o, cols, i);
        }
    }

    /// <summary>Ends four dot products of one input row against weight rows <paramref name="o"/>…o+3 (row 0 at
    /// <paramref name="w0"/>): each row's <see cref="RowSum"/> (the columns from <paramref name="i"/> past the last full
    /// vector, the bias) and the store; the kernels that compute four rows at once (several rows, portable) end them here.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void FinishFour(float s0, float s1, float s2, float s3, float* w0, float* x, float* y, float* bias, int cols, int o, int i)
    {
        float* b = bias == null ? null : bias + o;
        y[o] = RowSum(s0, w0, x, b, cols, i);
        y[o + 1] = RowSum(s1, w0 + cols, x, b == null ? null : b + 1, cols, i);
        y[o + 2] = RowSum(s2, w0 + 2L * cols, x, b == null ? null : b + 2, cols, i);
        y[o + 3] = RowSum(s3, w0 + 3L * cols, x, b == null ? null : b + 3, cols, i);
    }
}
