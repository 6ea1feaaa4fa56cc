using ShardPipe.Modeling.Core;
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ShardPipe.Modeling.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// <c>F.linear</c> with a packed int4/int8 weight (<see cref="PackedWeight"/>), for decode (one row) and prefill or
/// merged steps (many rows), on the decode kernels' <see cref="SpinPool"/>. Codes are widened to float32 in registers and
/// never written out as floats. Per group the kernel accumulates Σ code·x, then adds scale·(that − zero·Σx), which is
/// Σ scale·(code − zero)·x regrouped: float32 accumulation throughout. With AVX-512 a 16-byte load gives 32 int4 or
/// 16 int8 codes; the input is gathered once per call into the codes' order (act-order permutation, and for int4 the
/// order of <see cref="Layout"/>), so the inner loop is load, mask/shift, widen, convert, FMA — for int4 rows of whole
/// 128-code blocks (the wide layout) load 64 bytes, shift, permute, FMA. From <see cref="DenseRows"/> rows (prefill, merged
/// steps) each code is decoded once: on the spin pool, a cache-sized tile of dequantized float32 rows per thread through the
/// float32 kernels (<see cref="DenseTiles"/>), or for bfloat16 inputs of <see cref="DenseBf16Rows"/> rows and more the weight
/// dequantized to bf16 in chunks through libtorch's bf16 GEMM (<see cref="DenseBf16"/>); <see cref="Dense"/>, the tiles
/// through libtorch's float32 GEMM on the calling thread, remains for the portable path and comparisons.
/// </summary>
public static unsafe class QuantKernels
{
    /// <summary>Rows of the input that share one decoding of a weight block.</summary>
    private const int RowTile = 4;
    private const int PrefetchAhead = 1024; // bytes ahead within the packed rows
    /// <summary>From this many input rows (prefill, large merged steps) the weight is dequantized a tile of output rows at a
    /// time and multiplied by a dense kernel (<see cref="DenseTiles"/>, <see cref="DenseBf16"/>): decoding each code once
    /// beats decoding it per 4 rows.</summary>
    public const int DenseRows = 16;

    public static Tensor Linear(Tensor x, PackedWeight w, Tensor? bias) => Linear(x, w, bias, portable: false);

    /// <summary>The input a quantized product takes — <paramref name="inFeatures"/> wide, float32, bfloat16 or float16 on
    /// CPU — or a typed error naming what is wrong; returns its dtype.</summary>
    private static ScalarType CheckInput(Tensor x, int inFeatures)
    {
        long last = x.Shape()[^1];
        if (last != inFeatures) throw new ShapeMismatchException($"quantized linear expects {inFeatures} input features, got {last}");
        var type = x.dtype;
        if (type is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16) || x.device_type != DeviceType.CPU)
            throw new UnsupportedException($"quantized linear computes on CPU in float32, bfloat16 or float16, not {type} on {x.device_type}");
        return type;
    }

    /// <summary>As <see cref="Linear(Tensor, PackedWeight, Tensor?)"/>; <paramref name="portable"/> forces the portable
    /// (scalar) path on a machine with AVX-512, so that tests compare both paths on the same weights.</summary>
    public static Tensor Linear(Tensor x, PackedWeight w, Tensor? bias, bool portable)
    {
        int k = w.In, n = w.Out;
        var type = CheckInput(x, k);
        int m = (int)(x.NumberOfElements / k);
        bool simd = !portable && Simd(w);
        if (m >= DenseRows)
            return !DenseOnPool || !simd ? Dense(x, w, bias, m, simd)
                : DenseBf16Enabled && type == ScalarType.BFloat16 && m >= DenseBf16Rows ? DenseBf16(x, w, bias, m, simd)
                : DenseTiles(x, w, bias, m, simd);
        if (DecodeRowsApply(w, simd) && (m == 1 || (m > 1 && ManyRowsEnabled))) return DecodeRow(x, w, bias);
        int kp = w.WordsPerRow * w.CodesPerWord, groups = w.Groups;
        // Inputs and outputs are read and written here in their own dtype: no libtorch conversions per call (a decode
        // step makes dozens of these calls, and each libtorch op costs more than the int4 product of a small layer).
        var input = x.is_contiguous() ? x : x.contiguous();
        var output = empty(x.Shape()[..^1].Append(n).ToArray(), type);
        var xs = ArrayPool<float>.Shared.Rent(Math.Max(1, m * kp));
        var sums = ArrayPool<float>.Shared.Rent(Math.Max(1, m * groups));
        var ys = type == ScalarType.Float32 ? null : ArrayPool<float>.Shared.Rent(Math.Max(1, m * n));
        try
        {
            var xp = (byte*)TensorMemory.Pointer(input);
            var gather = w.Gather;
            int layout = Layout(w, simd), inSize = type == ScalarType.Float32 ? 4 : 2;
            var src = SourceMap(w, layout);
            var row = new float[k];
            for (int r = 0; r < m; r++)
            {
                byte* xr = xp + (long)r * k * inSize;
                fixed (float* xq = &xs[r * kp], rp = row)
                {
                    GatherRow(xr, type, src, xq, k);
                    GatherRow(xr, type, Identity(k), rp, k); // the row as float32, for the group sums
                }
                for (int g = 0; g < groups; g++)
                {
                    float s = 0;
                    int end = Math.Min(k, (g + 1) * w.GroupSize);
                    for (int j = g * w.GroupSize; j < end; j++) s += row[gather[j]];
                    sums[r * groups + g] = s;
                }
            }
            var at = w.Memory;
            byte* codes = (byte*)at.Codes;
            float* scales = (float*)at.Scales, zeros = (float*)at.Zeros;
            fixed (float* xq0 = xs, sq0 = sums, yq0 = ys)
            {
                float* yp = ys is null ? (float*)TensorMemory.Pointer(output) : yq0;
                var job = new Job(w, codes, scales, zeros, xq0, sq0, yp, m, kp, simd, layout == WideInt4, NibblesByPermute);
                int parts = Math.Clamp(n / 32, 1, Math.Max(1, Math.Min(get_num_threads(), SpinPool.Shared.Helpers + 1)));
                SpinPool.Shared.Run(parts, p => job.Rows(SpinPool.Bound(n, p, parts), SpinPool.Bound(n, p + 1, parts)));
                Finish(yp, output, bias, m, n, type);
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(xs);
            ArrayPool<float>.Shared.Return(sums);
            if (ys is not null) ArrayPool<float>.Shared.Return(ys);
            if (!ReferenceEquals(input, x)) input.Dispose();
        }
        return output;
    }

    /// <summary>The bias added to the float32 results <paramref name="yp"/> (m rows of n), and — when the output is not
    /// float32 (then yp is a separate buffer) — the results stored into <paramref name="output"/> in its dtype.</summary>
    private static void Finish(float* yp, Tensor output, Tensor? bias, int m, int n, ScalarType type)
    {
        using var b = bias is null || bias.is_contiguous() ? null : bias.contiguous();
        var bp = bias is null ? null : (byte*)TensorMemory.Pointer(b ?? bias);
        var op = (byte*)TensorMemory.Pointer(output);
        int size = type == ScalarType.Float32 ? 4 : 2;
        for (int r = 0; r < m; r++) FinishRange(yp + (long)r * n, bp, bias?.dtype ?? type, op + (long)r * n * size, type, 0, n);
    }

    /// <summary>Outputs [lo, hi) of one row: <paramref name="bias"/> (null: none; of dtype <paramref name="biasType"/>) added
    /// to the float32 results <paramref name="yp"/>, then — when the output's <paramref name="type"/> is not float32 (yp is
    /// then a separate buffer) — stored into <paramref name="op"/> in that dtype, rounded as libtorch rounds. Ranges are
    /// independent, so the decode kernels' threads each finish the rows they computed.</summary>
    private static void FinishRange(float* yp, byte* bias, ScalarType biasType, byte* op, ScalarType type, int lo, int hi)
    {
        if (bias is not null)
            for (int o = lo; o < hi; o++) yp[o] += Load(bias, o, biasType);
        if (type == ScalarType.Float32) return;
        long i = lo;
        if (type == ScalarType.BFloat16 && Avx512F.IsSupported)
            for (; i + 16 <= hi; i += 16) // Store's rounding, 16 at a time (the head's 32000 outputs one by one cost tens of µs a token)
                StepKernels.Bf16Of16(Vector512.Load(yp + i)).Store((ushort*)op + i);
        for (; i < hi; i++) Store(op, i, type, yp[i]);
    }

    /// <summary>Off: one-row int4/int8 products take the per-row kernels below instead of <see cref="QuantDecodeRows"/>
    /// (benchmarks and tests compare both; default on).</summary>
    public static bool DecodeRowsEnabled { get; set; } = true;

    /// <summary>Off: 2 to <see cref="DenseRows"/> − 1 input rows take the per-row path below (its gather and kernels)
    /// instead of <see cref="DecodeRows"/> with <see cref="QuantDecodeRows.Int4RowsMany"/> (benchmarks and tests compare
    /// both; default on).</summary>
    public static bool ManyRowsEnabled { get; set; } = true;

    /// <summary>int4 in <see cref="QuantDecodeRows"/>: nibbles decoded by mask-into-2²³ (<see cref="QuantDecodeRows.ByMagic"/>)
    /// rather than by the 16-entry permute (the same results bit for bit). Default off since session 12
    /// (<see cref="DefaultNibblesByMagic"/>): in the restructured kernel (one flat loop, no spills) the permute decoding takes
    /// fewer instructions per 128 codes (≈ 37 against ≈ 47 a row: the ternary logic op overwrites an operand, so each code
    /// vector also costs a register copy) and measured ≈ 10 % faster on the in-cache layer in every helper run (BENCHMARKS.md,
    /// session 12), and it needs no rescaled inputs; session 11's quiet runs had favoured magic in the kernel before it
    /// (28.5–30 against 40–42 µs). rows4_magic and rows4_permute in <c>bench quant-kernels</c> measure both.</summary>
    public static bool NibblesByMagic { get; set; } = DefaultNibblesByMagic;

    /// <summary>The default of <see cref="NibblesByMagic"/> (tests and benchmarks that switch it put this back).</summary>
    public const bool DefaultNibblesByMagic = false;

    /// <summary>Whether a one-row product takes <see cref="QuantDecodeRows"/>: AVX-512, int4 in the wide layout or int8 in
    /// 32-code steps of whole groups.</summary>
    internal static bool DecodeRowsApply(PackedWeight w, bool simd) => DecodeRowsEnabled && simd
        && (Layout(w, simd) == WideInt4 || (w.Bits == 8 && QuantDecodeRows.Int8Applies(w.In, w.GroupSize)));

    /// <summary>Per weight with a permutation, its map in each layout (indexed by layout; the portable path and the SIMD
    /// kernels read the same weight in different orders).</summary>
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<PackedWeight, int[]?[]> Sources = new();
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(int Layout, int Packed, int In), int[]> PlainSources = new();

    /// <summary>For each position of the gathered row (the kernels' order, <see cref="Layout"/>), the input it reads
    /// (−1: padding): built once per weight with an act-order permutation, and once per shape for all the weights without
    /// one — so that <see cref="DecodeRowsTogether"/> finds a layer's q, k and v (or gate and up) sharing one map by
    /// reference instead of comparing them input by input each step, and <see cref="GatherRow"/> knows the plain wide order.</summary>
    private static int[] SourceMap(PackedWeight w, int layout) => w.Perm is null
        ? PlainSources.GetOrAdd((layout, w.WordsPerRow * w.CodesPerWord, w.In), _ => Map(w.Gather, layout))
        : Sources.GetValue(w, _ => new int[]?[3])[layout] ??= Map(w.Gather, layout);

    private static int[] Map(int[] gather, int layout)
    {
        var src = new int[gather.Length];
        for (int j = 0; j < gather.Length; j++) src[Order(j, layout)] = gather[j];
        return src;
    }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<int, int[]> Identities = new();

    /// <summary>0 … k − 1: <see cref="GatherRow"/> with it reads a row as float32 in its own order.</summary>
    private static int[] Identity(int k) => Identities.GetOrAdd(k, n => Enumerable.Range(0, n).ToArray());

    /// <summary>Whether <paramref name="src"/> is the wide layout's own order of whole 128-input blocks (no permutation, no
    /// padding): <see cref="GatherRow"/> then transposes each block in registers.</summary>
    private static bool PlainWide(int[] src, int k) =>
        src.Length == k && k % 128 == 0 && PlainSources.TryGetValue((WideInt4, k, k), out var plain) && ReferenceEquals(plain, src);

    /// <summary>One input row through <see cref="QuantDecodeRows"/>: <see cref="DecodeRows"/> of one weight.</summary>
    private static Tensor DecodeRow(Tensor x, PackedWeight w, Tensor? bias) => DecodeRows(x, new[] { w }, new[] { bias })[0];

    /// <summary>
    /// Whether <see cref="DecodeRows"/> takes these weights together: each takes <see cref="QuantDecodeRows"/> on its own,
    /// and they share bits, input width, group size, zero kind, layout and input order, so one gathered row serves them all
    /// (a layer's q, k and v; an MLP's gate and up — unless act-order gave each its own permutation).
    /// </summary>
    public static bool DecodeRowsTogether(IReadOnlyList<PackedWeight> weights)
    {
        if (weights.Count == 0) return false;
        var w0 = weights[0];
        if (!DecodeRowsApply(w0, Simd(w0))) return false;
        int layout = Layout(w0, true);
        var src = SourceMap(w0, layout);
        for (int i = 1; i < weights.Count; i++)
        {
            var w = weights[i];
            if (!Simd(w) || !DecodeRowsApply(w, true) || w.Bits != w0.Bits || w.In != w0.In || w.GroupSize != w0.GroupSize
                || (w.Zeros is null) != (w0.Zeros is null) || Layout(w, true) != layout) return false;
            var other = SourceMap(w, layout);
            if (!ReferenceEquals(other, src) && !other.AsSpan().SequenceEqual(src)) return false;
        }
        return true;
    }

    /// <summary>
    /// One input row — or up to <see cref="DenseRows"/> − 1 (a verification pass, a few streams' step) — times several
    /// packed weights (<see cref="DecodeRowsTogether"/>) through <see cref="QuantDecodeRows"/>: each row gathered into the
    /// kernels' order (in float32) and its lane-wise chunk sums (the zero term, folded into the kernels) once, then on the
    /// spin pool four output rows a pass for one input row, two weight rows against two or three inputs a pass for more
    /// (<see cref="QuantDecodeRows.Int4RowsMany"/>, <see cref="QuantDecodeRows.Int8RowsMany"/>); the output rows of all the
    /// weights cut into one set of parts of whole fours that the threads claim one at a time (one hand-over to the helpers
    /// instead of one per weight), each thread adding the bias and storing the dtype of the rows it computed. Each output
    /// equals the weight's product alone bit for bit, and each input row's outputs that row's alone: every output is the
    /// same sum, whichever part and pass compute it.
    /// </summary>
    private static Tensor[] DecodeRows(Tensor x, IReadOnlyList<PackedWeight> weights, IReadOnlyList<Tensor?> biases)
    {
        int k = weights[0].In, count = weights.Count;
        var type = x.dtype;
        int m = (int)(x.NumberOfElements / k);
        var input = x.is_contiguous() ? x : x.contiguous();
        var shape = x.Shape();
        var outputs = new Tensor[count];
        var outs = new nint[count];
        var bs = new (nint, ScalarType)[count];
        List<Tensor>? held = null; // contiguous copies of strided biases, for the job's length
        try
        {
            for (int i = 0; i < count; i++)
            {
                shape[^1] = weights[i].Out;
                outputs[i] = empty(shape, type);
                outs[i] = (nint)TensorMemory.Pointer(outputs[i]);
                var b = biases[i];
                if (b is not null && !b.is_contiguous()) (held ??= new()).Add(b = b.contiguous());
                bs[i] = (b is null ? 0 : (nint)TensorMemory.Pointer(b), b?.dtype ?? type);
            }
            DecodeRowsInto((byte*)TensorMemory.Pointer(input), type, m, weights, bs, outs);
        }
        finally
        {
            if (!ReferenceEquals(input, x)) input.Dispose();
            held?.ForEach(t => t.Dispose());
        }
        return outputs;
    }

    /// <summary>
    /// <see cref="DecodeRows(Tensor, IReadOnlyList{PackedWeight}, IReadOnlyList{Tensor?})"/> at pointers: <paramref name="m"/>
    /// contiguous input rows of <paramref name="type"/> at <paramref name="xp"/>; weight i's (m, Out) outputs, of the same
    /// dtype, at <paramref name="outputs"/>[i]; its bias (contiguous, of its own dtype) or 0. The weights must pass
    /// <see cref="DecodeRowsTogether"/> and m be below <see cref="DenseRows"/>. The decode layer's path
    /// (<c>LlamaDecodeLayer</c>) writes into buffers it keeps; the tensor form above allocates them.
    /// </summary>
    internal static void DecodeRowsInto(byte* xp, ScalarType type, int m, IReadOnlyList<PackedWeight> weights, IReadOnlyList<(nint Ptr, ScalarType Type)> biases, IReadOnlyList<nint> outputs) =>
        new DecodeRowsJob(weights, biases).Run(xp, type, m, outputs);

    /// <summary>
    /// <see cref="DecodeRowsInto"/> for one set of weights, what depends on them alone worked out once: the kernels' input
    /// order, the job's row offsets, the weights' addresses. The decode layer (<c>LlamaDecodeLayer</c>) keeps one per group
    /// of a block's products; the tensor forms make one per call.
    /// </summary>
    internal sealed class DecodeRowsJob
    {
        private readonly PackedWeight[] _weights;
        private readonly (nint Ptr, ScalarType Type)[] _biases;
        private readonly (nint Codes, nint Scales, nint Zeros)[] _memory;
        private readonly int[] _offsets, _outs; // weight i's rows are rows [offsets[i], offsets[i + 1]) of the job
        private readonly int[] _src;
        private readonly int _k, _gs, _kp, _chunkCodes, _zStride, _total;
        private readonly bool _int4;
        private readonly float _laneFactor;
        private readonly long _firstCodeBytes;

        public DecodeRowsJob(IReadOnlyList<PackedWeight> weights, IReadOnlyList<(nint Ptr, ScalarType Type)> biases)
        {
            _weights = weights.ToArray();
            _biases = biases.ToArray();
            var w0 = _weights[0];
            _k = w0.In;
            _gs = w0.GroupSize;
            _int4 = w0.Bits == 4;
            _src = SourceMap(w0, Layout(w0, true));
            _kp = _src.Length;
            _chunkCodes = _int4 ? QuantDecodeRows.Int4ChunkCodes(_gs) : _gs;
            _zStride = (_k + _chunkCodes - 1) / _chunkCodes * 16;
            _laneFactor = QuantDecodeRows.LaneFactor(w0.Zeros is not null, w0.MidZero);
            _offsets = new int[_weights.Length + 1];
            _outs = new int[_weights.Length];
            _memory = new (nint, nint, nint)[_weights.Length];
            for (int i = 0; i < _weights.Length; i++)
            {
                _outs[i] = _weights[i].Out;
                _offsets[i + 1] = _offsets[i] + _outs[i];
                var at = _weights[i].Memory;
                _memory[i] = (at.Codes, at.Scales, at.Zeros);
            }
            _total = _offsets[^1];
            _firstCodeBytes = _int4 ? w0.Codes.NumberOfElements * 4 : 0;
        }

        /// <summary>The products of <paramref name="m"/> rows at <paramref name="xp"/> (of <paramref name="type"/>) into <paramref name="outputs"/>.</summary>
        public void Run(byte* xp, ScalarType type, int m, IReadOnlyList<nint> outputs)
        {
            int k = _k, gs = _gs, kp = _kp, zStride = _zStride, count = _weights.Length;
            bool int4 = _int4;
            var xs = ArrayPool<float>.Shared.Rent(m * kp);
            var zx = ArrayPool<float>.Shared.Rent(m * zStride);
            var ys = type == ScalarType.Float32 ? null : ArrayPool<float>.Shared.Rent(m * _total);
            try
            {
                int inSize = type == ScalarType.Float32 ? 4 : 2;
                bool magic = int4 && NibblesByMagic;
                fixed (float* xq = xs, zq = zx, yq0 = ys)
                {
                    for (int r = 0; r < m; r++)
                    {
                        GatherRow(xp + (long)r * k * inSize, type, _src, xq + (long)r * kp, k);
                        QuantDecodeRows.LaneSums(xq + (long)r * kp, k, _chunkCodes, _laneFactor, zq + (long)r * zStride);
                        if (magic) QuantDecodeRows.ByMagic.ScaleInputs(xq + (long)r * kp, k); // after the sums: they are of the inputs themselves
                    }
                    // Weight i's outputs: row r at Y + r·Out (the output itself in float32, else its block of the float32 buffer).
                    var ya0 = new nint[count];
                    for (int i = 0; i < count; i++) ya0[i] = ys is null ? outputs[i] : (nint)(yq0 + (long)_offsets[i] * m);
                    nint xa = (nint)xq, za = (nint)zq;
                    var memory = _memory;
                    var biases = _biases;
                    var outs = _outs;
                    DecodeKernels.RunWeights(_offsets, (i, lo, hi) =>
                    {
                        var (codes, scales, zeros) = memory[i];
                        nint ya = ya0[i];
                        int n = outs[i];
                        if (m > 1 && int4 && !magic)
                            QuantDecodeRows.Int4RowsMany((byte*)codes, (float*)scales, (float*)zeros, (float*)xa, kp, (float*)za, zStride, m, k, gs, lo, hi, (float*)ya, n);
                        else if (m > 1 && !int4)
                            QuantDecodeRows.Int8RowsMany((byte*)codes, (float*)scales, (float*)zeros, (float*)xa, kp, (float*)za, zStride, m, k, gs, lo, hi, (float*)ya, n);
                        else
                            for (int r = 0; r < m; r++)
                            {
                                float* xr = (float*)xa + (long)r * kp, zr = (float*)za + (long)r * zStride, yr = (float*)ya + (long)r * n;
                                if (magic) QuantDecodeRows.Int4Rows<QuantDecodeRows.ByMagic>((byte*)codes, (float*)scales, (float*)zeros, xr, zr, k, gs, lo, hi, yr);
                                else if (int4) QuantDecodeRows.Int4Rows<QuantDecodeRows.ByPermute>((byte*)codes, (float*)scales, (float*)zeros, xr, zr, k, gs, lo, hi, yr);
                                else QuantDecodeRows.Int8Rows((byte*)codes, (float*)scales, (float*)zeros, xr, zr, k, gs, lo, hi, yr);
                            }
                        // Each thread finishes the rows it computed (bias, the output's dtype) while they are in its cache, in
                        // parallel: on the calling thread after the job this was ≈ 1.2 % of a bf16-activation int4 step's main thread.
                        var (bias, biasType) = biases[i];
                        for (int r = 0; r < m; r++)
                            FinishRange((float*)ya + (long)r * n, (byte*)bias, biasType, (byte*)outputs[i] + (long)r * n * inSize, type, lo, hi); // outputs take the input's dtype
                    }, int4 ? memory[0].Codes : 0, _firstCodeBytes); // WeightPrefetch: int4 only (int8 measured no gain)
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(xs);
                ArrayPool<float>.Shared.Return(zx);
                if (ys is not null) ArrayPool<float>.Shared.Return(ys);
            }
        }
    }

    /// <summary>
    /// One input row into the kernels' order: <c>xq[d] = x[src[d]]</c> as float32, 0 where src[d] is −1 (padding). The
    /// wide layout's own order (<see cref="PlainWide"/>) is a fixed transpose of each 128-input block, done in registers
    /// (<see cref="TransposeWide"/>); any other order one input at a time, one loop per input dtype. This runs on the
    /// calling thread before every product of a few rows, once a row (53 K inputs a decode token on the 134M Llama). Read through a per-element
    /// dtype switch, which the JIT kept inside the loop, it took ≈ 9 % of an int4 decode step's main thread (int4
    /// generations alternating both in one process, medians of 14: 364 → 389 tok/s); one at a time without the switch
    /// ≈ 1.5 %.
    /// </summary>
    private static void GatherRow(byte* xp, ScalarType type, int[] src, float* xq, int k)
    {
        int kp = src.Length;
        if (type is ScalarType.Float32 or ScalarType.BFloat16 && Avx512F.IsSupported && PlainWide(src, k))
        {
            for (int b = 0; b < k; b += 128) TransposeWide(xp, type == ScalarType.BFloat16, b, xq + b);
            return;
        }
        fixed (int* s = src)
        {
            if (type == ScalarType.Float32)
                for (int d = 0; d < kp; d++) xq[d] = s[d] < 0 ? 0f : ((float*)xp)[s[d]];
            else if (type == ScalarType.BFloat16)
                for (int d = 0; d < kp; d++) xq[d] = s[d] < 0 ? 0f : StepKernels.FromBf16(((ushort*)xp)[s[d]]);
            else
                for (int d = 0; d < kp; d++) xq[d] = s[d] < 0 ? 0f : (float)((Half*)xp)[s[d]];
        }
    }

    /// <summary>
    /// One 128-input block from <paramref name="b"/> into the wide order (<see cref="Order"/>): run s of the output is
    /// inputs s, 8 + s, …, 120 + s — the 16 × 8 block transposed. Three rounds of two-source permutes over the block's eight
    /// vectors (24 in all): pairs of vectors into half-runs of four inputs, of eight, then whole runs.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void TransposeWide(byte* xp, bool bf16, int b, float* dst)
    {
        var t = WideTables.Instance;
        Vector512<float> R(int v) => bf16 ? StepKernels.Widen16(Vector256.Load((ushort*)xp + b + 16 * v)) : Vector512.Load((float*)xp + b + 16 * v);
        // Round 1: vectors 2u, 2u + 1 (inputs 32u … 32u + 31) → p[u, h]: inputs 8i + 4h + s' of i = 4u … 4u + 3, s' = 0 … 3.
        Vector512<float> r0 = R(0), r1 = R(1), r2 = R(2), r3 = R(3), r4 = R(4), r5 = R(5), r6 = R(6), r7 = R(7);
        var p00 = Avx512F.PermuteVar16x32x2(r0, t.First0, r1); var p01 = Avx512F.PermuteVar16x32x2(r0, t.First1, r1);
        var p10 = Avx512F.PermuteVar16x32x2(r2, t.First0, r3); var p11 = Avx512F.PermuteVar16x32x2(r2, t.First1, r3);
        var p20 = Avx512F.PermuteVar16x32x2(r4, t.First0, r5); var p21 = Avx512F.PermuteVar16x32x2(r4, t.First1, r5);
        var p30 = Avx512F.PermuteVar16x32x2(r6, t.First0, r7); var p31 = Avx512F.PermuteVar16x32x2(r6, t.First1, r7);
        // Round 2: p[2X, h], p[2X + 1, h] → q[X, h, g]: s' = 2g, 2g + 1 of i = 8X … 8X + 7.
        var qa00 = Avx512F.PermuteVar16x32x2(p00, t.Second0, p10); var qa01 = Avx512F.PermuteVar16x32x2(p00, t.Second1, p10);
        var qa10 = Avx512F.PermuteVar16x32x2(p01, t.Second0, p11); var qa11 = Avx512F.PermuteVar16x32x2(p01, t.Second1, p11);
        var qb00 = Avx512F.PermuteVar16x32x2(p20, t.Second0, p30); var qb01 = Avx512F.PermuteVar16x32x2(p20, t.Second1, p30);
        var qb10 = Avx512F.PermuteVar16x32x2(p21, t.Second0, p31); var qb11 = Avx512F.PermuteVar16x32x2(p21, t.Second1, p31);
        // Round 3: q[0, h, g], q[1, h, g] → runs s = 4h + 2g and 4h + 2g + 1, all 16 i.
        Avx512F.PermuteVar16x32x2(qa00, t.Third0, qb00).Store(dst);
        Avx512F.PermuteVar16x32x2(qa00, t.Third1, qb00).Store(dst + 16);
        Avx512F.PermuteVar16x32x2(qa01, t.Third0, qb01).Store(dst + 32);
        Avx512F.PermuteVar16x32x2(qa01, t.Third1, qb01).Store(dst + 48);
        Avx512F.PermuteVar16x32x2(qa10, t.Third0, qb10).Store(dst + 64);
        Avx512F.PermuteVar16x32x2(qa10, t.Third1, qb10).Store(dst + 80);
        Avx512F.PermuteVar16x32x2(qa11, t.Third0, qb11).Store(dst + 96);
        Avx512F.PermuteVar16x32x2(qa11, t.Third1, qb11).Store(dst + 112);
    }

    /// <summary>The index vectors of <see cref="TransposeWide"/>'s rounds (bit 4 of an index picks the second source).</summary>
    private sealed class WideTables
    {
        public static readonly WideTables Instance = new();
        public readonly Vector512<int> First0, First1, Second0, Second1, Third0, Third1;

        private WideTables()
        {
            // Round 1, half h: element s'·4 + j is input i = 4u + j, s = 4h + s' — vector 2u + j / 2, lane 8·(j % 2) + s.
            First0 = Table(e => (e % 4 >= 2 ? 16 : 0) + 8 * (e % 2) + e / 4);
            First1 = Table(e => (e % 4 >= 2 ? 16 : 0) + 8 * (e % 2) + 4 + e / 4);
            // Round 2, pair g: element t'·8 + i' (s' = 2g + t', i' = 0 … 7) is at s'·4 + i' % 4 of p[2X + i' / 4].
            Second0 = Table(e => (e % 8 >= 4 ? 16 : 0) + (e / 8) * 4 + e % 4);
            Second1 = Table(e => (e % 8 >= 4 ? 16 : 0) + (2 + e / 8) * 4 + e % 4);
            // Round 3, run t: element i is at t·8 + i % 8 of q[i / 8].
            Third0 = Table(e => (e >= 8 ? 16 : 0) + e % 8);
            Third1 = Table(e => (e >= 8 ? 16 : 0) + 8 + e % 8);
        }

        private static Vector512<int> Table(Func<int, int> index)
        {
            var v = new int[16];
            for (int e = 0; e < 16; e++) v[e] = index(e);
            return Vector512.Create(v);
        }
    }

    /// <summary>
    /// Several products of one input of 1 to <see cref="DenseRows"/> − 1 rows (<see cref="DecodeRowsTogether"/>) as one
    /// job; each output as <see cref="Linear(Tensor, PackedWeight, Tensor?)"/> gives it. x: rows of the weights' input width, CPU, float32,
    /// bfloat16 or float16.
    /// </summary>
    public static Tensor[] Linears(Tensor x, IReadOnlyList<PackedWeight> weights, IReadOnlyList<Tensor?> biases)
    {
        if (weights.Count == 0 || biases.Count != weights.Count) throw new ArgumentException("one bias (or null) per weight, at least one weight");
        var w0 = weights[0];
        CheckInput(x, w0.In);
        long m = x.NumberOfElements / w0.In;
        if (m >= DenseRows || (m > 1 && !ManyRowsEnabled) || !DecodeRowsTogether(weights))
            return weights.Select((w, i) => Linear(x, w, biases[i])).ToArray();
        return DecodeRows(x, weights, biases);
    }

    /// <summary>
    /// Many rows, the path before <see cref="DenseTiles"/> (now the portable path's, and <see cref="DenseOnPool"/> off):
    /// y = x · Wᵀ + b with W dequantized exactly as <see cref="PackedWeight.Dequantize"/> does (scale·(code − zero),
    /// float32), a tile of output rows at a time into one reused, cache-sized float32 buffer per thread, each tile multiplied
    /// by every input row with libtorch's GEMM (float32) before the next is decoded; the result in x's dtype. A tile that
    /// fits the cache is written and read back there: a whole layer dequantized at once (what this path did before) wrote
    /// up to 16 MB of fresh, page-faulting memory per call and read it back from DRAM.
    /// </summary>
    private static Tensor Dense(Tensor x, PackedWeight w, Tensor? bias, int m, bool simd)
    {
        int k = w.In, n = w.Out;
        using var scope = NewDisposeScope();
        var x2 = x.reshape(m, k);
        var xf = x2.dtype == ScalarType.Float32 ? x2 : x2.to(ScalarType.Float32);
        var bf = bias is null ? null : bias.dtype == ScalarType.Float32 ? bias : bias.to(ScalarType.Float32);
        int block = (int)Math.Min(n, Math.Max(8, TileBytes / (4L * k)));
        var tile = Tile(block, k);
        var dst = (float*)TensorMemory.Pointer(tile);
        Tensor y;
        if (block == n)
        {
            Dequantize(w, 0, n, dst, simd);
            y = nn.functional.linear(xf, tile.narrow(0, 0, n), bf);
        }
        else
        {
            y = empty(new long[] { m, n }, ScalarType.Float32);
            for (int o0 = 0; o0 < n; o0 += block)
            {
                int rows = Math.Min(block, n - o0);
                Dequantize(w, o0, rows, dst, simd);
                using var part = nn.functional.linear(xf, tile.narrow(0, 0, rows), bf?.narrow(0, o0, rows));
                y.narrow(1, o0, rows).copy_(part);
            }
        }
        if (y.dtype != x.dtype) y = y.to(x.dtype);
        return y.reshape(x.Shape()[..^1].Append(n).ToArray()).MoveToOuterDisposeScope();
    }

    /// <summary>Off: many-row products take <see cref="Dense"/> (tiles on the calling thread through libtorch's GEMM)
    /// instead of <see cref="DenseTiles"/> (benchmarks and tests compare both; default on).</summary>
    public static bool DenseOnPool { get; set; } = true;

    /// <summary>
    /// Many rows on the spin pool: the output rows cut into tiles of <see cref="TileBytes"/> of dequantized float32 weight
    /// (whole fours), each thread claiming a tile at a time, decoding it into its own cache-resident buffer
    /// (<see cref="Dequantize"/>, the values of <see cref="PackedWeight.Dequantize"/>) and multiplying every input row by it
    /// with the float32 kernels (<see cref="Fp32Kernels.RowsOf"/>: register-blocked passes of at most
    /// <see cref="Fp32Kernels.MaxRows"/> input rows), straight into its columns of the output. Against <see cref="Dense"/>:
    /// both cores decode (there the calling thread decoded while libtorch's threads waited), one hand-over per product
    /// instead of a GEMM call, a wake-up of libtorch's threads and a strided copy per tile (a 128-row prefill of the
    /// 134M Llama made ≈ 650 of each).
    /// </summary>
    private static Tensor DenseTiles(Tensor x, PackedWeight w, Tensor? bias, int m, bool simd)
    {
        int k = w.In, n = w.Out;
        using var scope = NewDisposeScope();
        var x2 = x.reshape(m, k);
        var xf = x2.dtype == ScalarType.Float32 && x2.is_contiguous() ? x2 : x2.to(ScalarType.Float32).contiguous();
        var bf = bias is null ? null : bias.dtype == ScalarType.Float32 && bias.is_contiguous() ? bias : bias.to(ScalarType.Float32).contiguous();
        var y = empty(new long[] { m, n }, ScalarType.Float32);
        float* xp = (float*)TensorMemory.Pointer(xf), yp = (float*)TensorMemory.Pointer(y), bp = bf is null ? null : (float*)TensorMemory.Pointer(bf);
        int tileRows = TileRows(k, n), tiles = (n + tileRows - 1) / tileRows;
        nint xa = (nint)xp, ya = (nint)yp, ba = (nint)bp;
        long job = Fp32Kernels.NewJob(); // every tile a thread takes multiplies the same input rows: packed once a thread
        SpinPool.Shared.Run(tiles, t =>
        {
            int o0 = t * tileRows, rows = Math.Min(tileRows, n - o0);
            float* tile = ThreadTile((long)tileRows * k);
            Dequantize(w, o0, rows, tile, simd);
            // The tile holds rows [o0, o0 + rows): the kernels index W by output row.
            Fp32Kernels.RowsOf(tile - (long)o0 * k, (float*)xa, (float*)ya, (float*)ba, k, n, m, o0, o0 + rows, portable: !simd, job: job);
        });
        var result = y.dtype != x.dtype ? y.to(x.dtype) : y;
        return result.reshape(x.Shape()[..^1].Append(n).ToArray()).MoveToOuterDisposeScope();
    }

    /// <summary>From this many rows a bfloat16 input takes <see cref="DenseBf16"/> (libtorch's bf16 GEMM is efficient on
    /// long inputs; shorter ones take <see cref="DenseTiles"/>).</summary>
    public const int DenseBf16Rows = 64;

    /// <summary>Off: bfloat16 inputs of many rows take <see cref="DenseTiles"/> (float32) instead of <see cref="DenseBf16"/>
    /// (benchmarks and tests compare both; default on).</summary>
    public static bool DenseBf16Enabled { get; set; } = true;

    /// <summary>Bytes of bf16 weight per GEMM of <see cref="DenseBf16"/> (4 MB: every decoder Linear of the 134M Llama in one,
    /// its 32,000-row head in twelve).</summary>
    private const long ChunkBytes = 4L << 20;

    /// <summary>
    /// A bfloat16 input of many rows (a bf16 model's prefill): the weight dequantized (<see cref="Dequantize"/>, float32
    /// values rounded once to bf16, as transformers computes a bf16 model whose quantized Linears hold their dequantized
    /// weights) on the spin pool into a reused buffer of at most <see cref="ChunkBytes"/>, then libtorch's bf16 GEMM (the
    /// CPU's AVX512_BF16 dot products where it has them, about twice the float32 kernels' rate here) once per chunk.
    /// </summary>
    private static Tensor DenseBf16(Tensor x, PackedWeight w, Tensor? bias, int m, bool simd)
    {
        int k = w.In, n = w.Out;
        using var scope = NewDisposeScope();
        var x2 = x.reshape(m, k);
        var bb = bias is null ? null : bias.dtype == ScalarType.BFloat16 ? bias : bias.to(ScalarType.BFloat16);
        int chunkRows = (int)Math.Min(n, Math.Max(4, ChunkBytes / (2L * k)));
        var chunk = Bf16Chunk(chunkRows, k);
        nint dst = (nint)TensorMemory.Pointer(chunk);
        Tensor? y = chunkRows == n ? null : empty(new long[] { m, n }, ScalarType.BFloat16);
        for (int o0 = 0; o0 < n; o0 += chunkRows)
        {
            int rows = Math.Min(chunkRows, n - o0), parts = SpinPool.Shared.Parts(rows, 16);
            int first = o0;
            SpinPool.Shared.Run(parts, p =>
            {
                int from = SpinPool.Bound(rows, p, parts), to = SpinPool.Bound(rows, p + 1, parts);
                DequantizeBf16(w, first + from, to - from, (ushort*)dst + (long)from * k, simd);
            });
            var part = nn.functional.linear(x2, chunk.narrow(0, 0, rows), bb?.narrow(0, o0, rows));
            if (y is null) y = part;
            else y.narrow(1, o0, rows).copy_(part);
        }
        return y!.reshape(x.Shape()[..^1].Append(n).ToArray()).MoveToOuterDisposeScope();
    }

    [ThreadStatic] private static Tensor? _bf16Chunk;

    /// <summary>This thread's bf16 chunk buffer for <see cref="DenseBf16"/>, at least rows × k (grown as needed, kept).</summary>
    private static Tensor Bf16Chunk(int rows, int k) => Reused(ref _bf16Chunk, rows, k, ScalarType.BFloat16);

    /// <summary>Output rows per tile of <see cref="DenseTiles"/>: <see cref="TileBytes"/> of float32 rows, whole fours (the
    /// register-blocked kernel's step), at least 4, at most the weight.</summary>
    public static int TileRows(int k, int n) => (int)Math.Min(n, Math.Max(4, TileBytes / (4L * k) & ~3L));

    [ThreadStatic] private static nint _poolTile;
    [ThreadStatic] private static long _poolTileFloats;

    /// <summary>This thread's tile buffer for <see cref="DenseTiles"/>, at least <paramref name="floats"/> (native, 64-byte
    /// aligned; grown when a wider layer needs more, kept for the thread's life: the spin pool's threads live as long as
    /// the process).</summary>
    private static float* ThreadTile(long floats)
    {
        if (_poolTileFloats < floats)
        {
            if (_poolTile != 0) System.Runtime.InteropServices.NativeMemory.AlignedFree((void*)_poolTile);
            _poolTile = (nint)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(floats * 4), 64);
            _poolTileFloats = floats;
        }
        return (float*)_poolTile;
    }

    /// <summary>The dequantized tile's size: half of a core's L2 on the machines measured (1 MB), so the tile and the
    /// GEMM's packed panels stay in cache between decoding and use.</summary>
    private const long TileBytes = 512L << 10;

    [ThreadStatic] private static Tensor? _tile;

    /// <summary>This thread's float32 tile buffer, at least rows × k (grown when a wider layer needs more; never freed while the thread lives).</summary>
    private static Tensor Tile(int rows, int k) => Reused(ref _tile, rows, k, ScalarType.Float32);

    /// <summary>A rows × k view of the buffer in <paramref name="slot"/> (a thread's own), replaced by a larger one of
    /// <paramref name="type"/> when it holds fewer elements; outside every dispose scope.</summary>
    private static Tensor Reused(ref Tensor? slot, int rows, int k, ScalarType type)
    {
        long need = (long)rows * k;
        if (slot is null || slot.NumberOfElements < need)
        {
            slot?.Dispose();
            slot = empty(new long[] { need }, type);
            slot.DetachFromDisposeScope();
        }
        return slot.narrow(0, 0, need).view(rows, k);
    }

    /// <summary>Rows [o0, o0 + rows) of W [Out, In] in float32 into <paramref name="dst"/> (row-major, In per row), on the
    /// calling thread (the many-row paths call it from each pool thread for its own tile).</summary>
    internal static void Dequantize(PackedWeight w, int o0, int rows, float* dst, bool simd) => DequantizeRows<Float32Out>(w, o0, rows, (byte*)dst, simd);

    /// <summary>
    /// Rows [o0, o0 + rows) of the weight dequantized as <see cref="Dequantize"/> does (the same float32 values), each
    /// rounded once to bf16 (to nearest, ties to even, as <see cref="StepKernels.Narrow"/>) into <paramref name="dst"/>
    /// (rows × In, row-major).
    /// </summary>
    internal static void DequantizeBf16(PackedWeight w, int o0, int rows, ushort* dst, bool simd) => DequantizeRows<Bf16Out>(w, o0, rows, (byte*)dst, simd);

    /// <summary>Where <see cref="DequantizeRows{TOut}"/> writes its values: float32 as they are, or rounded to bf16.</summary>
    private interface IDequantizedOut
    {
        static abstract int Size { get; }
        static abstract void Store16(Vector512<float> v, byte* at);
        static abstract void Store(float v, byte* at);
    }

    private readonly struct Float32Out : IDequantizedOut
    {
        public static int Size => 4;
        public static void Store16(Vector512<float> v, byte* at) => v.Store((float*)at);
        public static void Store(float v, byte* at) => *(float*)at = v;
    }

    private readonly struct Bf16Out : IDequantizedOut
    {
        public static int Size => 2;
        public static void Store16(Vector512<float> v, byte* at) => StepKernels.Bf16Of16(v).Store((ushort*)at);
        public static void Store(float v, byte* at) => *(ushort*)at = StepKernels.ToBf16(v);
    }

    /// <summary>The one decoding of <see cref="Dequantize"/> and <see cref="DequantizeBf16"/>: scale·(code − zero) in
    /// float32, with AVX-512 and no act-order 32 (int4) or 16 (int8) codes a step, else code by code through the gather.</summary>
    private static void DequantizeRows<TOut>(PackedWeight w, int o0, int rows, byte* dst, bool simd) where TOut : struct, IDequantizedOut
    {
        var at = w.Memory;
        byte* codes = (byte*)at.Codes;
        float* scales = (float*)at.Scales, zeros = (float*)at.Zeros;
        var gather = w.Gather;
        simd = simd && w.Perm is null;
        int k = w.In, groups = w.Groups, gs = w.GroupSize, rowBytes = w.WordsPerRow * 4, bits = w.Bits, pf = 32 / bits;
        float mid = w.MidZero;
        uint mask = (1u << bits) - 1;
        var nibble = Vector128.Create((byte)0x0F);
        for (int r = 0; r < rows; r++)
        {
            int o = o0 + r;
            byte* row = codes + (long)o * rowBytes;
            float* s = scales + (long)o * groups, z = zeros is null ? null : zeros + (long)o * groups;
            byte* d = dst + (long)r * k * TOut.Size;
            for (int g = 0; g < groups; g++)
            {
                float sg = s[g], zg = z is null ? mid : z[g];
                int j = g * gs, end = Math.Min(k, (g + 1) * gs);
                if (simd)
                {
                    var vs = Vector512.Create(sg);
                    var vz = Vector512.Create(zg);
                    if (bits == 4)
                        for (; j < end; j += 32)
                        {
                            var b = Vector128.Load(row + j / 2);
                            var lo = b & nibble;
                            var hi = Vector128.ShiftRightLogical(b.AsUInt16(), 4).AsByte() & nibble;
                            var c0 = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Sse2.UnpackLow(lo, hi)));
                            var c1 = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Sse2.UnpackHigh(lo, hi)));
                            TOut.Store16((c0 - vz) * vs, d + (long)j * TOut.Size);
                            TOut.Store16((c1 - vz) * vs, d + (long)(j + 16) * TOut.Size);
                        }
                    else
                        for (; j < end; j += 16)
                            TOut.Store16((Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(row + j))) - vz) * vs, d + (long)j * TOut.Size);
                }
                else
                {
                    uint* words = (uint*)row;
                    for (; j < end; j++) TOut.Store(sg * (((words[j / pf] >> (j % pf * bits)) & mask) - zg), d + (long)gather[j] * TOut.Size);
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Load(byte* p, long i, ScalarType type) => type switch
    {
        ScalarType.Float32 => ((float*)p)[i],
        ScalarType.BFloat16 => StepKernels.FromBf16(((ushort*)p)[i]),
        _ => (float)((Half*)p)[i],
    };

    /// <summary>Rounds to the output dtype as libtorch does (bf16: to nearest, ties to even; NaN stays NaN).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(byte* p, long i, ScalarType type, float v)
    {
        if (type == ScalarType.BFloat16)
        {
            uint bits = BitConverter.SingleToUInt32Bits(v);
            ((ushort*)p)[i] = (bits & 0x7fffffff) > 0x7f800000 ? (ushort)((bits >> 16) | 0x40) : (ushort)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
        }
        else ((Half*)p)[i] = (Half)v;
    }

    /// <summary>Whether the AVX-512 path applies: whole 16-byte blocks per group.</summary>
    internal static bool Simd(PackedWeight w)
    {
        int block = w.Bits == 4 ? 32 : 16;
        return Avx512F.IsSupported && w.GroupSize % block == 0 && w.In % block == 0;
    }

    private const int NaturalOrder = 0, PairedInt4 = 1, WideInt4 = 2;

    /// <summary>
    /// The order the gathered input row takes (what the int4 SIMD kernels read): <see cref="WideInt4"/> where the row is
    /// whole 128-code blocks and a group is 32, 64 or a multiple of 128 codes (every block within one group or made of
    /// whole groups), else <see cref="PairedInt4"/> for the other int4 SIMD shapes, <see cref="NaturalOrder"/> otherwise.
    /// </summary>
    internal static int Layout(PackedWeight w, bool simd) =>
        !simd || w.Bits != 4 ? NaturalOrder
        : WideInt4Enabled && w.In % 128 == 0 && (w.GroupSize is 32 or 64 || w.GroupSize % 128 == 0) ? WideInt4 : PairedInt4;

    /// <summary>Where packed column j's input goes in the gathered row. <see cref="PairedInt4"/>: each 32 columns become
    /// their 16 even ones (low nibbles of 16 bytes) then their 16 odd ones (high nibbles). <see cref="WideInt4"/>: a 64-byte
    /// load is 16 words of 8 codes each (word i holds columns 8i … 8i + 7, nibble s = column 8i + s), so the codes at
    /// nibble s of every word — one shift and mask of the whole register, no shuffle — meet the inputs 8i + s: each
    /// 128 columns become 8 runs of 16, run s holding columns s, 8 + s, …, 120 + s.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Order(int j, int layout) => layout switch
    {
        PairedInt4 => (j & ~31) | ((j & 1) << 4) | ((j & 31) >> 1),
        WideInt4 => (j & ~127) | ((j & 7) << 4) | ((j & 127) >> 3),
        _ => j,
    };

    /// <summary>Off: int4 runs the paired-layout kernels even where the wide layout applies (benchmarks compare both in one run; default on).</summary>
    public static bool WideInt4Enabled { get; set; } = true;

    /// <summary>How the wide kernels turn a shifted word into a float code: a 16-entry permute (default) or mask and convert (benchmarks compare both).</summary>
    public static bool NibblesByPermute { get; set; } = true;

    /// <summary>Sixteen codes from the low 4 bits of each word of a shifted register, as float32.</summary>
    private interface INibbles
    {
        static abstract Vector512<float> Codes(Vector512<uint> shifted);
    }

    /// <summary>The permute reads only an index's low 4 bits, so the table {0, 1, …, 15} turns a shifted word into its
    /// code without a mask or a conversion.</summary>
    private readonly struct ByPermute : INibbles
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Codes(Vector512<uint> shifted) => Avx512F.PermuteVar16x32(CodeTable, shifted.AsInt32());
    }

    private readonly struct ByConvert : INibbles
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Codes(Vector512<uint> shifted) => Avx512F.ConvertToVector512Single((shifted & Vector512.Create(15u)).AsInt32());
    }

    private static readonly Vector512<float> CodeTable = Vector512.Create(0f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    private static readonly Vector512<int> Quads = Vector512.Create(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    private static readonly Vector512<int> Octets = Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);

    private sealed class Job
    {
        private readonly PackedWeight _w;
        private readonly byte* _codes;
        private readonly float* _scales, _zeros, _x, _sums, _y;
        private readonly int _m, _kp;
        private readonly bool _simd, _wide, _permute;

        public Job(PackedWeight w, byte* codes, float* scales, float* zeros, float* x, float* sums, float* y, int m, int kp, bool simd, bool wide, bool permute)
        {
            _w = w; _codes = codes; _scales = scales; _zeros = zeros; _x = x; _sums = sums; _y = y; _m = m; _kp = kp; _simd = simd; _wide = wide; _permute = permute;
        }

        public void Rows(int from, int to)
        {
            int groups = _w.Groups, n = _w.Out, rowBytes = _w.WordsPerRow * 4;
            float mid = _w.MidZero;
            float* d = stackalloc float[RowTile];
            for (int o = from; o < to; o++)
            {
                byte* row = _codes + (long)o * rowBytes;
                float* s = _scales + (long)o * groups;
                float* z = _zeros is null ? null : _zeros + (long)o * groups;
                for (int r0 = 0; r0 < _m; r0 += RowTile)
                {
                    int rn = Math.Min(RowTile, _m - r0);
                    if (_wide && _permute) WideRows<ByPermute>(row, s, rn, r0, d);
                    else if (_wide) WideRows<ByConvert>(row, s, rn, r0, d);
                    else if (_simd && rn == 1) d[0] = _w.Bits == 4 ? Int4Row(row, s, _x + (long)r0 * _kp) : Int8Row(row, s, _x + (long)r0 * _kp);
                    else if (_simd && _w.Bits == 4) Int4Simd(row, s, rn, r0, d);
                    else if (_simd) Int8Simd(row, s, rn, r0, d);
                    else Scalar(row, s, z, rn, r0, d);
                    for (int t = 0; t < rn; t++)
                        _y[(long)(r0 + t) * n + o] = _simd ? d[t] - ZeroTerm(s, z, mid, _sums + (long)(r0 + t) * groups, groups) : d[t];
                }
            }
        }

        /// <summary>Σ_g scale_g · zero_g · Σ_{j∈g} x_j (zero_g = mid when symmetric), over 16 groups at a time: a scalar
        /// chain of one FMA per group would cost a small-group layer (32 inputs a group) as much as its codes.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static float ZeroTerm(float* s, float* z, float mid, float* sums, int groups)
        {
            int g = 0;
            float total = 0;
            if (Vector512.IsHardwareAccelerated && groups >= 16)
            {
                var acc = Vector512<float>.Zero;
                for (; g + 16 <= groups; g += 16)
                {
                    var sz = Vector512.Load(s + g) * Vector512.Load(sums + g);
                    acc = z is null ? acc + sz : Vector512.FusedMultiplyAdd(sz, Vector512.Load(z + g), acc);
                }
                total = Vector512.Sum(z is null ? acc * mid : acc);
            }
            for (; g < groups; g++) total += s[g] * (z is null ? mid : z[g]) * sums[g];
            return total;
        }

        /// <summary>
        /// One input row (decode): Σ_g scale_g · Σ_{j∈g} code_j · x_j with four independent FMA chains over 64 codes
        /// (one chain would wait on the FMA latency, not on memory), one prefetch per cache line.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private float Int4Row(byte* row, float* s, float* x)
        {
            int gs = _w.GroupSize, groups = _w.Groups, k = _w.In;
            var mask = Vector128.Create((byte)0x0F);
            var acc = Vector512<float>.Zero; var odd = acc; // even and odd groups: two chains of the per-group FMA, not one
            for (int g = 0; g < groups; g++)
            {
                var e0 = Vector512<float>.Zero; var e1 = e0; var e2 = e0; var e3 = e0;
                int j = g * gs, end = Math.Min(k, (g + 1) * gs);
                for (; j + 64 <= end; j += 64)
                {
                    byte* p = row + j / 2;
                    if ((j & 127) == 0) Sse.Prefetch0(p + PrefetchAhead);
                    var b0 = Vector128.Load(p);
                    var b1 = Vector128.Load(p + 16);
                    e0 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(b0 & mask)), Vector512.Load(x + j), e0);
                    e1 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.ShiftRightLogical(b0.AsUInt16(), 4).AsByte() & mask)), Vector512.Load(x + j + 16), e1);
                    e2 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(b1 & mask)), Vector512.Load(x + j + 32), e2);
                    e3 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.ShiftRightLogical(b1.AsUInt16(), 4).AsByte() & mask)), Vector512.Load(x + j + 48), e3);
                }
                for (; j < end; j += 32)
                {
                    var b = Vector128.Load(row + j / 2);
                    e0 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(b & mask)), Vector512.Load(x + j), e0);
                    e1 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.ShiftRightLogical(b.AsUInt16(), 4).AsByte() & mask)), Vector512.Load(x + j + 16), e1);
                }
                var e = gs >= 64 ? (e0 + e1) + (e2 + e3) : e0 + e1;
                if ((g & 1) == 0) acc = Vector512.FusedMultiplyAdd(Vector512.Create(s[g]), e, acc);
                else odd = Vector512.FusedMultiplyAdd(Vector512.Create(s[g]), e, odd);
            }
            return Vector512.Sum(acc + odd);
        }

        /// <summary>
        /// int4 in the <see cref="WideInt4"/> layout, for 1–4 rows: each 64-byte load (128 codes) is decoded once into 8
        /// vectors of 16 codes (shift, permute) that every row multiplies; lane i of a row's block sum covers columns
        /// 8i … 8i + 7, so with groups of 32 or 64 the block sum is scaled per lane (4 or 2 groups per block), with larger
        /// groups once per group. Σ_g scale_g · Σ_{j∈g} code_j · x_j; the zero term is added by the caller.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void WideRows<TNibbles>(byte* row, float* s, int rn, int r0, float* d) where TNibbles : struct, INibbles
        {
            int gs = _w.GroupSize, blocks = _w.In / 128;
            float* x0 = _x + (long)r0 * _kp, x1 = x0 + _kp, x2 = x1 + _kp, x3 = x2 + _kp;
            var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            int perGroup = gs >= 128 ? gs / 128 : 1; // blocks summed before one scale (gs ≥ 128), else 1
            for (int b0 = 0; b0 < blocks; b0 += perGroup)
            {
                var p0 = Vector512<float>.Zero; var p1 = p0; var p2 = p0; var p3 = p0;
                int bEnd = Math.Min(blocks, b0 + perGroup);
                for (int b = b0; b < bEnd; b++)
                {
                    byte* p = row + b * 64;
                    Sse.Prefetch0(p + PrefetchAhead);
                    var v = Vector512.Load((uint*)p);
                    var c0 = TNibbles.Codes(v); var c1 = TNibbles.Codes(v >>> 4); var c2 = TNibbles.Codes(v >>> 8); var c3 = TNibbles.Codes(v >>> 12);
                    var c4 = TNibbles.Codes(v >>> 16); var c5 = TNibbles.Codes(v >>> 20); var c6 = TNibbles.Codes(v >>> 24); var c7 = TNibbles.Codes(v >>> 28);
                    long o = b * 128L;
                    p0 = Block(c0, c1, c2, c3, c4, c5, c6, c7, x0 + o, p0);
                    if (rn > 1)
                    {
                        p1 = Block(c0, c1, c2, c3, c4, c5, c6, c7, x1 + o, p1);
                        if (rn > 2)
                        {
                            p2 = Block(c0, c1, c2, c3, c4, c5, c6, c7, x2 + o, p2);
                            if (rn > 3) p3 = Block(c0, c1, c2, c3, c4, c5, c6, c7, x3 + o, p3);
                        }
                    }
                }
                Vector512<float> sv = gs switch
                {
                    32 => Avx512F.PermuteVar16x32(Vector128.Load(s + b0 * 4).ToVector256Unsafe().ToVector512Unsafe(), Quads),
                    64 => Avx512F.PermuteVar16x32(Vector128.Create(s[b0 * 2], s[b0 * 2 + 1], 0, 0).ToVector256Unsafe().ToVector512Unsafe(), Octets),
                    _ => Vector512.Create(s[b0 * 128 / gs]),
                };
                a0 = Vector512.FusedMultiplyAdd(sv, p0, a0);
                a1 = Vector512.FusedMultiplyAdd(sv, p1, a1);
                a2 = Vector512.FusedMultiplyAdd(sv, p2, a2);
                a3 = Vector512.FusedMultiplyAdd(sv, p3, a3);
            }
            d[0] = Vector512.Sum(a0); d[1] = Vector512.Sum(a1); d[2] = Vector512.Sum(a2); d[3] = Vector512.Sum(a3);
        }

        /// <summary>One row's 128 codes of a block: acc + Σ_s codes_s · x[16s …]; two chains, so one row waits on half the FMA latency.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<float> Block(Vector512<float> c0, Vector512<float> c1, Vector512<float> c2, Vector512<float> c3,
            Vector512<float> c4, Vector512<float> c5, Vector512<float> c6, Vector512<float> c7, float* x, Vector512<float> acc)
        {
            var e = Vector512.FusedMultiplyAdd(c0, Vector512.Load(x), Vector512.Multiply(c1, Vector512.Load(x + 16)));
            var f = Vector512.FusedMultiplyAdd(c2, Vector512.Load(x + 32), Vector512.Multiply(c3, Vector512.Load(x + 48)));
            e = Vector512.FusedMultiplyAdd(c4, Vector512.Load(x + 64), e);
            f = Vector512.FusedMultiplyAdd(c5, Vector512.Load(x + 80), f);
            e = Vector512.FusedMultiplyAdd(c6, Vector512.Load(x + 96), e);
            f = Vector512.FusedMultiplyAdd(c7, Vector512.Load(x + 112), f);
            return acc + (e + f);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private float Int8Row(byte* row, float* s, float* x)
        {
            int gs = _w.GroupSize, groups = _w.Groups, k = _w.In;
            var acc = Vector512<float>.Zero; var odd = acc;
            for (int g = 0; g < groups; g++)
            {
                var e0 = Vector512<float>.Zero; var e1 = e0; var e2 = e0; var e3 = e0;
                int j = g * gs, end = Math.Min(k, (g + 1) * gs);
                for (; j + 64 <= end; j += 64)
                {
                    byte* p = row + j;
                    Sse.Prefetch0(p + PrefetchAhead);
                    e0 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p))), Vector512.Load(x + j), e0);
                    e1 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p + 16))), Vector512.Load(x + j + 16), e1);
                    e2 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p + 32))), Vector512.Load(x + j + 32), e2);
                    e3 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p + 48))), Vector512.Load(x + j + 48), e3);
                }
                for (; j + 32 <= end; j += 32)
                {
                    e0 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(row + j))), Vector512.Load(x + j), e0);
                    e1 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(row + j + 16))), Vector512.Load(x + j + 16), e1);
                }
                for (; j < end; j += 16)
                    e2 = Vector512.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(row + j))), Vector512.Load(x + j), e2);
                var e = (e0 + e1) + (e2 + e3);
                if ((g & 1) == 0) acc = Vector512.FusedMultiplyAdd(Vector512.Create(s[g]), e, acc);
                else odd = Vector512.FusedMultiplyAdd(Vector512.Create(s[g]), e, odd);
            }
            return Vector512.Sum(acc + odd);
        }

        /// <summary>Σ_g scale_g · Σ_{j∈g} code_j · x_j for rn rows; the zero term is added by the caller.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Int4Simd(byte* row, float* s, int rn, int r0, float* d)
        {
            int gs = _w.GroupSize, groups = _w.Groups;
            float* x0 = _x + (long)r0 * _kp, x1 = x0 + _kp, x2 = x1 + _kp, x3 = x2 + _kp;
            var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            var mask = Vector128.Create((byte)0x0F);
            for (int g = 0; g < groups; g++)
            {
                var d0 = Vector512<float>.Zero; var d1 = d0; var d2 = d0; var d3 = d0;
                int end = Math.Min(_w.In, (g + 1) * gs);
                for (int j = g * gs; j < end; j += 32)
                {
                    byte* p = row + j / 2;
                    if ((j & 127) == 0) Sse.Prefetch0(p + PrefetchAhead);
                    var b = Vector128.Load(p);
                    var lo = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(b & mask));
                    var hi = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.ShiftRightLogical(b.AsUInt16(), 4).AsByte() & mask));
                    d0 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x0 + j + 16), Vector512.FusedMultiplyAdd(lo, Vector512.Load(x0 + j), d0));
                    if (rn > 1)
                    {
                        d1 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x1 + j + 16), Vector512.FusedMultiplyAdd(lo, Vector512.Load(x1 + j), d1));
                        if (rn > 2)
                        {
                            d2 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x2 + j + 16), Vector512.FusedMultiplyAdd(lo, Vector512.Load(x2 + j), d2));
                            if (rn > 3) d3 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x3 + j + 16), Vector512.FusedMultiplyAdd(lo, Vector512.Load(x3 + j), d3));
                        }
                    }
                }
                var sg = Vector512.Create(s[g]);
                a0 = Vector512.FusedMultiplyAdd(sg, d0, a0);
                a1 = Vector512.FusedMultiplyAdd(sg, d1, a1);
                a2 = Vector512.FusedMultiplyAdd(sg, d2, a2);
                a3 = Vector512.FusedMultiplyAdd(sg, d3, a3);
            }
            d[0] = Vector512.Sum(a0); d[1] = Vector512.Sum(a1); d[2] = Vector512.Sum(a2); d[3] = Vector512.Sum(a3);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Int8Simd(byte* row, float* s, int rn, int r0, float* d)
        {
            int gs = _w.GroupSize, groups = _w.Groups;
            float* x0 = _x + (long)r0 * _kp, x1 = x0 + _kp, x2 = x1 + _kp, x3 = x2 + _kp;
            var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            for (int g = 0; g < groups; g++)
            {
                var d0 = Vector512<float>.Zero; var d1 = d0; var d2 = d0; var d3 = d0;
                int end = Math.Min(_w.In, (g + 1) * gs);
                for (int j = g * gs; j < end; j += 16)
                {
                    byte* p = row + j;
                    if ((j & 63) == 0) Sse.Prefetch0(p + PrefetchAhead);
                    var c = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p)));
                    d0 = Vector512.FusedMultiplyAdd(c, Vector512.Load(x0 + j), d0);
                    if (rn > 1)
                    {
                        d1 = Vector512.FusedMultiplyAdd(c, Vector512.Load(x1 + j), d1);
                        if (rn > 2)
                        {
                            d2 = Vector512.FusedMultiplyAdd(c, Vector512.Load(x2 + j), d2);
                            if (rn > 3) d3 = Vector512.FusedMultiplyAdd(c, Vector512.Load(x3 + j), d3);
                        }
                    }
                }
                var sg = Vector512.Create(s[g]);
                a0 = Vector512.FusedMultiplyAdd(sg, d0, a0);
                a1 = Vector512.FusedMultiplyAdd(sg, d1, a1);
                a2 = Vector512.FusedMultiplyAdd(sg, d2, a2);
                a3 = Vector512.FusedMultiplyAdd(sg, d3, a3);
            }
            d[0] = Vector512.Sum(a0); d[1] = Vector512.Sum(a1); d[2] = Vector512.Sum(a2); d[3] = Vector512.Sum(a3);
        }

        /// <summary>The portable path (any group size, any machine): scale·(code − zero)·x summed per group, zero term included.</summary>
        private void Scalar(byte* row, float* s, float* z, int rn, int r0, float* d)
        {
            int gs = _w.GroupSize, groups = _w.Groups, k = _w.In, bits = _w.Bits, pf = 32 / bits;
            uint mask = (1u << bits) - 1;
            uint* words = (uint*)row;
            float mid = _w.MidZero;
            for (int t = 0; t < rn; t++)
            {
                float* x = _x + (long)(r0 + t) * _kp;
                float acc = 0;
                for (int g = 0; g < groups; g++)
                {
                    float zero = z is null ? mid : z[g], dot = 0;
                    int end = Math.Min(k, (g + 1) * gs);
                    for (int j = g * gs; j < end; j++)
                        dot += (((words[j / pf] >> (j % pf * bits)) & mask) - zero) * x[j];
                    acc += s[g] * dot;
                }
                d[t] = acc;
            }
        }
    }
}
