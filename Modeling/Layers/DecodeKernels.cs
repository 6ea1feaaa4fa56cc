using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ShardPipe.Modeling.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// Matrix-vector products for decoding with bfloat16 weights. Decode reads every weight once per token, so its speed
/// is the speed of reading weights; libtorch 2.10's CPU bf16 GEMV for one row runs at about half the machine's read
/// bandwidth (BENCHMARKS.md, decode profile). Here each weight row is widened to float32 in registers (a bf16 is the
/// high half of a float32) and accumulated with FMA in float32, the rows split over the node's intra-op threads; the
/// result is rounded to bf16 once, as a bf16 GEMM with float32 accumulation does.
/// </summary>
public static unsafe class DecodeKernels
{
    /// <summary>Inputs of at most this many rows take the kernel (a decode step, a small batch); longer ones go to libtorch.</summary>
    public const int MaxRows = 8;

    /// <summary>
    /// Whether <see cref="LinearBf16"/> applies: bf16 weight and input on CPU, few rows, contiguous weight, and AVX-512
    /// (checked as an ISA: .NET reports Vector512 as not accelerated on CPUs where it prefers 256-bit code, yet emits it).
    /// </summary>
    public static bool Applies(Tensor x, Tensor weight)
    {
        if (weight.dtype != ScalarType.BFloat16 || x.dtype != ScalarType.BFloat16 || !System.Runtime.Intrinsics.X86.Avx512F.IsSupported
            || weight.device_type != DeviceType.CPU || x.device_type != DeviceType.CPU || !weight.is_contiguous()) return false;
        long[] ws = weight.Shape(); // one native read each (a step checks ~85 Linears)
        return ws.Length == 2 && x.Shape()[^1] == ws[1] && TakesRows(x.NumberOfElements / ws[1]);
    }

    /// <summary>The part of <see cref="Applies"/> that depends on the machine and the input's row count.</summary>
    internal static bool TakesRows(long m) => System.Runtime.Intrinsics.X86.Avx512F.IsSupported && m <= MaxRows;

    /// <summary><c>F.linear(x, weight, bias)</c> for bf16: (…, K) × (N, K)ᵀ → (…, N), one libtorch call (the output).</summary>
    public static Tensor LinearBf16(Tensor x, Tensor weight, Tensor? bias) => LinearsBf16(x, new[] { weight }, new[] { bias })[0];

    /// <summary>
    /// Several Linears of one input — a layer's q, k and v projections, an MLP's gate and up — as one job of the
    /// <see cref="SpinPool"/>: the input widened once, the output rows of all the weights cut into one set of parts,
    /// so the helpers are handed work once instead of once per projection (each hand-over and its wait for the last
    /// part cost microseconds, several times per layer of every token). Each output equals <see cref="LinearBf16"/>
    /// of its weight bit for bit: every output element is the same dot product, whichever part computes it.
    /// Every weight must pass <see cref="Applies"/> with <paramref name="x"/>.
    /// </summary>
    public static Tensor[] LinearsBf16(Tensor x, IReadOnlyList<Tensor> weights, IReadOnlyList<Tensor?> biases)
    {
        if (weights.Count == 0 || biases.Count != weights.Count) throw new ArgumentException("one bias (or null) per weight, at least one weight");
        long[] xshape = x.Shape();
        int k = (int)xshape[^1];
        int m = (int)(xshape.Aggregate(1L, (a, d) => a * d) / k);
        int count = weights.Count;
        var ns = new int[count];
        var ws = new nint[count];
        for (int i = 0; i < count; i++)
        {
            long[] shape = weights[i].Shape();
            if (shape[1] != k) throw new ArgumentException($"weight {i} takes {shape[1]} inputs, not {k}");
            ns[i] = (int)shape[0];
            ws[i] = (nint)TensorMemory.Pointer(weights[i]);
        }
        var input = x.is_contiguous() ? x : x.contiguous();
        var outputs = new Tensor[count];
        var outs = new nint[count];
        var bs = new nint[count];
        var converted = new List<Tensor>();
        try
        {
            for (int i = 0; i < count; i++)
            {
                xshape[^1] = ns[i];
                outputs[i] = empty(xshape, ScalarType.BFloat16);
                outs[i] = (nint)TensorMemory.Pointer(outputs[i]);
                if (biases[i] is { } bias)
                {
                    var b = bias.dtype == ScalarType.BFloat16 && bias.is_contiguous() ? bias : bias.to(ScalarType.BFloat16).contiguous();
                    if (!ReferenceEquals(b, bias)) converted.Add(b);
                    bs[i] = (nint)TensorMemory.Pointer(b);
                }
            }
            LinearsBf16Into((ushort*)TensorMemory.Pointer(input), m, k, ws, ns, bs, outs);
        }
        finally
        {
            if (!ReferenceEquals(input, x)) input.Dispose();
            foreach (var b in converted) b.Dispose();
        }
        return outputs;
    }

    /// <summary>
    /// <see cref="LinearsBf16"/> at pointers: <paramref name="m"/> contiguous bf16 input rows of <paramref name="k"/>; weight i
    /// (contiguous bf16, <paramref name="ns"/>[i] × k) at <paramref name="weights"/>[i], its contiguous bf16 bias or 0, its
    /// (m, ns[i]) bf16 outputs at <paramref name="outputs"/>[i]. The decode layer (<c>LlamaDecodeLayer</c>) writes into
    /// buffers it keeps; the tensor form allocates them.
    /// </summary>
    internal static void LinearsBf16Into(ushort* x, int m, int k, IReadOnlyList<nint> weights, IReadOnlyList<int> ns, IReadOnlyList<nint> biases, IReadOnlyList<nint> outputs)
    {
        int count = weights.Count;
        var offsets = new int[count + 1]; // weight i's rows are rows [offsets[i], offsets[i + 1]) of the job
        for (int i = 0; i < count; i++) offsets[i + 1] = offsets[i] + ns[i];
        int total = offsets[count];
        int xn = m * k, yn = m * total;
        var xs = ArrayPool<float>.Shared.Rent(xn); // the input rows widened once; pooled, as a head's output (vocab floats) would be a large-object allocation per token
        var ys = ArrayPool<float>.Shared.Rent(yn); // weight i's (m, n_i) outputs from m·offsets[i]
        try
        {
            fixed (float* xw = xs) StepKernels.Widen((byte*)x, bf16: true, xw, xn);
            fixed (float* xp = xs, yp = ys)
            {
                float* xq = xp, yq = yp;
                RunWeights(offsets, (i, lo, hi) => Rows((ushort*)weights[i], xq, yq + (long)m * offsets[i], k, ns[i], m, lo, hi)); // no WeightPrefetch: measured no gain in bf16
            }
            for (int i = 0; i < count; i++)
            {
                int n = ns[i], at = m * offsets[i];
                if (biases[i] != 0)
                {
                    var bp = (ushort*)biases[i];
                    for (int r = 0; r < m; r++)
                        for (int j = 0; j < n; j++) ys[at + r * n + j] += StepKernels.FromBf16(bp[j]);
                }
                fixed (float* yw = ys) StepKernels.Narrow(yw + at, (byte*)outputs[i], bf16: true, m * n); // vectorised rounding (a head's row is the vocabulary)
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(xs);
            ArrayPool<float>.Shared.Return(ys);
        }
    }

    /// <summary>Whether <see cref="RmsNorm"/> applies: a float32 or bf16 input of at most <see cref="StepKernels.MaxRows"/> rows on CPU, weight of its dtype.</summary>
    public static bool RmsNormApplies(Tensor x, Tensor weight) =>
        x.dtype is ScalarType.Float32 or ScalarType.BFloat16 && weight.dtype == x.dtype && x.device_type == DeviceType.CPU && weight.device_type == DeviceType.CPU
        && weight.is_contiguous() && weight.dim() == 1 && x.Shape()[^1] == weight.Shape()[0] && x.NumberOfElements / weight.Shape()[0] <= StepKernels.MaxRows;

    /// <summary>
    /// Llama's RMSNorm in one pass per row, as HF computes it: in float32, <c>h·rsqrt(mean(h²)+eps)</c>, cast back to the
    /// input dtype, then times the weight (in the input dtype: a bf16 product is rounded once more).
    /// </summary>
    public static Tensor RmsNorm(Tensor x, Tensor weight, double eps) => StepKernels.RmsNorm(x, weight, eps);

    /// <summary>
    /// Whether <see cref="Rotary"/> applies: a decode step's queries or keys (B, H, T, D) with B·T at most
    /// <see cref="StepKernels.MaxRows"/>, tables (B, T, D) of the same float32 or bf16 dtype, all contiguous on CPU.
    /// </summary>
    public static bool RotaryApplies(Tensor x, Tensor cos, Tensor sin)
    {
        // Each shape read is a native call and an array: read each once (this runs twice per layer of every step).
        if (x.dtype is not (ScalarType.Float32 or ScalarType.BFloat16) || cos.dtype != x.dtype || sin.dtype != x.dtype
            || x.device_type != DeviceType.CPU || cos.device_type != DeviceType.CPU || sin.device_type != DeviceType.CPU) return false;
        long[] xs = x.Shape(), cs = cos.Shape(), ss = sin.Shape();
        return xs.Length == 4 && cs.Length == 3 && ss.Length == 3 && xs[3] % 2 == 0
            && cs[0] == xs[0] && cs[1] == xs[2] && cs[2] == xs[3] && ss[0] == xs[0] && ss[1] == xs[2] && ss[2] == xs[3]
            && xs[0] * xs[1] * xs[2] * xs[3] > 0 && xs[0] * xs[2] <= StepKernels.MaxRows && x.is_contiguous() && cos.is_contiguous() && sin.is_contiguous();
    }

    /// <summary>
    /// Rotary position embedding in one pass, <c>x·cos + rotate_half(x)·sin</c> with cos and sin broadcast over the
    /// heads, op for op as the libtorch form computes it (each product rounded to the dtype, then the sum): one
    /// output tensor instead of nine libtorch calls per query or key of a decode step.
    /// </summary>
    public static Tensor Rotary(Tensor x, Tensor cos, Tensor sin) => StepKernels.Rotary(x, cos, sin); // vectorised, one pass

    /// <summary>
    /// One <see cref="SpinPool"/> job over the output rows of several weights of one input (weight i's are rows
    /// [offsets[i], offsets[i + 1]) of the job), cut into parts of whole fours (<see cref="Split"/>) that the threads claim
    /// one at a time; <paramref name="rows"/>(i, lo, hi) computes weight i's rows [lo, hi). The grouped Linears of every
    /// dtype (<see cref="LinearsBf16"/>, <c>Fp32Kernels.Linears</c>, <c>QuantKernels.Linears</c>) share this cut.
    /// <paramref name="firstWeight"/> (<paramref name="firstWeightBytes"/> long): where the first weight's data lies, the
    /// key of <see cref="WeightPrefetch"/>'s learnt order (0: the product takes no part in it).
    /// </summary>
    internal static void RunWeights(int[] offsets, Action<int, int, int> rows, nint firstWeight = 0, long firstWeightBytes = 0)
    {
        int total = offsets[^1], parts = SpinPool.Shared.Parts(total, 64);
        WeightPrefetch.Starting(firstWeight, firstWeightBytes);
        SpinPool.Shared.Run(parts, p =>
        {
            int from = Split(total, p, parts), to = Split(total, p + 1, parts);
            for (int i = 0; i + 1 < offsets.Length; i++)
            {
                int lo = Math.Max(from, offsets[i]) - offsets[i], hi = Math.Min(to, offsets[i + 1]) - offsets[i];
                if (lo < hi) rows(i, lo, hi);
            }
        });
        WeightPrefetch.Done(firstWeight, SpinPool.Shared); // the next product's weights toward the cache while this thread's serial work runs
    }

    /// <summary>Where part <paramref name="p"/> of <paramref name="parts"/> starts: on a multiple of four rows, so that
    /// every part but the last takes whole four-row passes of the kernels that run four rows a pass (the multi-row and
    /// quantized ones; the one-row bf16 kernel is indifferent).</summary>
    internal static int Split(int n, int p, int parts) => p >= parts ? n : (int)((long)n * p / parts) & ~3;

    /// <summary>Weight rows per block of <see cref="Rows"/>: 16 rows of a 3072-wide bf16 layer are 96 KB, inside L2.</summary>
    internal const int Block = 16;

    /// <summary>Output columns [from, to) of every input row, a block of weight rows at a time: each block is read from
    /// memory once for all <paramref name="m"/> input rows (the later rows find it in cache).</summary>
    private static void Rows(ushort* w, float* x, float* y, int k, int n, int m, int from, int to)
    {
        if (m == 1)
        {
            Bf16Rows(w, x, y, k, from, to);
            return;
        }
        for (int o = from; o < to; o += Block)
        {
            int end = Math.Min(o + Block, to);
            for (int r = 0; r < m; r++) Bf16Rows(w, x + (long)r * k, y + (long)r * n, k, o, end);
        }
    }

    /// <summary>Elements ahead of the current position to prefetch (4 KB): from DRAM, software prefetch lifts this loop
    /// well past what the hardware prefetcher alone keeps in flight on two cores.</summary>
    private const int PrefetchAhead = 2048;

    /// <summary>
    /// y[o] = Σᵢ W[o, i]·x[i] for rows [from, to) of a row-major bf16 W with <paramref name="cols"/> columns: one row at a
    /// time, front to back, so each thread reads one sequential stream. Four rows in lock-step (four streams 1.5–4 KB
    /// apart, sharing each load of x) read ≈ 36–40 GB/s on two cores here against ≈ 55–65 GB/s one row at a time
    /// (session 12, the whole 134M Llama's layer shapes from memory, alternating runs; BENCHMARKS "Session 12 — the bf16
    /// decode kernel reads one row at a time"). Each row's sum is its own (four accumulators over its columns, then
    /// their sum), so the result does not depend on how the rows are split between threads.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Bf16Rows(ushort* w, float* x, float* y, int cols, int from, int to)
    {
        for (int o = from; o < to; o++)
        {
            ushort* r = w + (long)o * cols;
            var a0 = Vector512<float>.Zero;
            var a1 = a0;
            var a2 = a0;
            var a3 = a0;
            int i = 0;
            for (; i + 64 <= cols; i += 64)
            {
                Sse.Prefetch0(r + i + PrefetchAhead); // past a row's end this reaches the next rows: still ahead of use
                Sse.Prefetch0(r + i + PrefetchAhead + 32);
                var v0 = Vector512.Load(r + i);
                var v1 = Vector512.Load(r + i + 32);
                a0 = Vector512.FusedMultiplyAdd(Low(v0), Vector512.Load(x + i), a0);
                a1 = Vector512.FusedMultiplyAdd(High(v0), Vector512.Load(x + i + 16), a1);
                a2 = Vector512.FusedMultiplyAdd(Low(v1), Vector512.Load(x + i + 32), a2);
                a3 = Vector512.FusedMultiplyAdd(High(v1), Vector512.Load(x + i + 48), a3);
            }
            if (i + 32 <= cols)
            {
                var v = Vector512.Load(r + i);
                a0 = Vector512.FusedMultiplyAdd(Low(v), Vector512.Load(x + i), a0);
                a1 = Vector512.FusedMultiplyAdd(High(v), Vector512.Load(x + i + 16), a1);
                i += 32;
            }
            float s = Vector512.Sum((a0 + a1) + (a2 + a3));
            for (; i < cols; i++) s += StepKernels.FromBf16(r[i]) * x[i];
            y[o] = s;
        }
    }

    /// <summary>The low (high) sixteen of 32 bf16 values as float32: zero-extend each to 32 bits, shift into the high half.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Low(Vector512<ushort> v) => Vector512.ShiftLeft(Vector512.WidenLower(v), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> High(Vector512<ushort> v) => Vector512.ShiftLeft(Vector512.WidenUpper(v), 16).AsSingle();
}
