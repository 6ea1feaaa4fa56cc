using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Text.Json.Nodes;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench decode --layout-micro</c>: what a weight-packed, k-major float32 layout would give, before anyone
/// changes the models' layout. The float32 products of one decode step of the generated 134M Llama (12 layers: q, k,
/// v, o 768→768, gate and up 768→2048, down 2048→768; 340 MB, so every product reads its weights from memory as a
/// step does) on m input rows, taking turns: the shipped kernels (<see cref="Fp32Kernels.Linear(TorchSharp.torch.Tensor, TorchSharp.torch.Tensor, TorchSharp.torch.Tensor?)"/>:
/// row-major weights, a 16-lane sum per output ended by a horizontal sum; one row, the few-row kernel, the register
/// blocks) against <see cref="KMajorCandidate"/> (the same weights packed 64 outputs × every column, one broadcast input
/// element times four 16-output vectors per column, no horizontal sums, no packing of the inputs). The candidate is a
/// measurement, not a kernel any model uses: its sums run in another order (one chain per output over the columns), so
/// adopting it changes every float32 path's bits together. Reports the medians of the paired ratios with their range,
/// and each kernel's m-row time over its one-row time (what <c>verify_pass_over_step</c> and <c>batching_speedup</c>
/// turn on). The candidate's products are checked against the shipped ones in every run.
/// </summary>
public static class Fp32LayoutMicro
{
    public static JsonObject Run(IReadOnlyList<int> rows, int rounds, bool asJson)
    {
        if (rows.Count == 0 || rows.Any(m => m < 1 || m > 64)) throw new InvalidInputException("--micro-rows with --layout-micro: each row count must be 1..64");
        if (rounds < 3) throw new InvalidInputException("--rounds must be at least 3 with --layout-micro");
        if (!KMajorCandidate.Supported) throw new InvalidInputException("--layout-micro needs AVX-512 (the candidate kernel has no portable form)");
        const int hidden = 768, inner = 2048, layers = 12;
        var shapes = Enumerable.Range(0, layers).SelectMany(_ => new (int N, int K)[] { (hidden, hidden), (hidden, hidden), (hidden, hidden), (hidden, hidden), (inner, hidden), (inner, hidden), (hidden, inner) }).ToArray();
        manual_seed(26);
        var weights = shapes.Select(s => randn(s.N, s.K) * 0.02).ToArray();
        var packed = weights.Select(w => KMajorCandidate.Pack(w)).ToArray();
        BenchSupport.Say(asJson, $"  {shapes.Length} products, {shapes.Sum(s => 4L * s.N * s.K) >> 20} MB of float32 weights, {get_num_threads()} threads; shipped kernels against the k-major candidate, taking turns, {rounds} rounds");
        var figures = new JsonObject { ["bench"] = "decode", ["mode"] = "layout-micro", ["rounds"] = rounds, ["threads"] = get_num_threads() };
        var shipped = new Dictionary<int, double>();
        var candidate = new Dictionary<int, double>();
        double worst = 0;
        try
        {
            foreach (int m in rows)
            {
                using var xh = randn(m, hidden);
                using var xf = randn(m, inner);
                var outputs = shapes.Select(s => empty(m, s.N)).ToArray();
                try
                {
                    Tensor Input(int i) => shapes[i].K == hidden ? xh : xf;
                    for (int i = 0; i < 7; i++) // one layer's products: the candidate computes what the shipped kernels do
                    {
                        KMajorCandidate.Linear(Input(i), packed[i], outputs[i]);
                        using var reference = Fp32Kernels.Linear(Input(i), weights[i], null);
                        double diff = (reference - outputs[i]).abs().max().item<float>();
                        double scale = reference.abs().max().item<float>();
                        if (!(diff <= 1e-5 * Math.Max(1, scale))) throw new InvalidOperationException($"the k-major candidate differs from the shipped kernel by {diff:g3} at m = {m}, product {i}");
                        worst = Math.Max(worst, diff);
                    }
                    double Shipped()
                    {
                        long t = Stopwatch.GetTimestamp();
                        for (int i = 0; i < weights.Length; i++) { using var y = Fp32Kernels.Linear(Input(i), weights[i], null); }
                        return Stopwatch.GetElapsedTime(t).TotalMilliseconds;
                    }
                    double Candidate()
                    {
                        long t = Stopwatch.GetTimestamp();
                        for (int i = 0; i < weights.Length; i++) KMajorCandidate.Linear(Input(i), packed[i], outputs[i]);
                        return Stopwatch.GetElapsedTime(t).TotalMilliseconds;
                    }
                    for (int w = 0; w < 3; w++) { Shipped(); Candidate(); }
                    var a = new List<double>();
                    var b = new List<double>();
                    for (int r = 0; r < rounds; r++)
                    {
                        if (r % 2 == 0) { a.Add(Shipped()); b.Add(Candidate()); }
                        else { b.Add(Candidate()); a.Add(Shipped()); }
                    }
                    var pairs = a.Zip(b, (s, c) => c / s).Order().ToList();
                    shipped[m] = Median(a);
                    candidate[m] = Median(b);
                    double gflops = 2.0 * m * shapes.Sum(s => (double)s.N * s.K) / 1e6;
                    BenchSupport.Say(asJson, $"  m = {m}: shipped {shipped[m]:0.00} ms ({gflops / shipped[m]:0} GFLOP/s), k-major {candidate[m]:0.00} ms ({gflops / candidate[m]:0} GFLOP/s); " +
                                             $"k-major / shipped, median of pairs {pairs[pairs.Count / 2]:0.000} ({pairs[0]:0.000}–{pairs[^1]:0.000})");
                    figures[$"shipped_ms_m{m}"] = Math.Round(shipped[m], 3);
                    figures[$"kmajor_ms_m{m}"] = Math.Round(candidate[m], 3);
                    figures[$"kmajor_over_shipped_m{m}"] = Math.Round(pairs[pairs.Count / 2], 4);
                    figures[$"kmajor_over_shipped_m{m}_min"] = Math.Round(pairs[0], 4);
                    figures[$"kmajor_over_shipped_m{m}_max"] = Math.Round(pairs[^1], 4);
                }
                finally
                {
                    foreach (var o in outputs) o.Dispose();
                }
            }
        }
        finally
        {
            foreach (var w in weights) w.Dispose();
            foreach (var p in packed) p.Dispose();
        }
        if (shipped.ContainsKey(1))
            foreach (int m in rows.Where(m => m > 1).Distinct())
            {
                figures[$"shipped_m{m}_over_m1"] = Math.Round(shipped[m] / shipped[1], 4);
                figures[$"kmajor_m{m}_over_m1"] = Math.Round(candidate[m] / candidate[1], 4);
                BenchSupport.Say(asJson, $"  {m} rows over one: shipped {shipped[m] / shipped[1]:0.000}×, k-major {candidate[m] / candidate[1]:0.000}×");
            }
        figures["max_abs_diff"] = worst;
        return figures;
    }

    private static double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);
}

/// <summary>
/// A candidate float32 layout for <see cref="Fp32LayoutMicro"/> (a measurement; no model uses it): a weight (n, k) packed
/// in groups of 64 outputs, each group column by column (64 floats a column), so that a product broadcasts one input
/// element against four 16-output vectors per column and each output's sum is one chain over the columns in order —
/// the same bits for any number of input rows, no horizontal sums, no packed inputs. Input rows go six at a time (24
/// accumulators; a group's weights, 196 KB at k = 768, are read again from L2 for the next six); groups are shared out
/// over <see cref="SpinPool.Shared"/>. n must be a multiple of 64.
/// </summary>
public sealed unsafe class KMajorCandidate : IDisposable
{
    public static bool Supported => Avx512F.IsSupported;

    private float* _packed;
    public int N { get; }
    public int K { get; }
    private int Groups => N / 64;

    private KMajorCandidate(float* packed, int n, int k)
    {
        _packed = packed;
        N = n;
        K = k;
    }

    public static KMajorCandidate Pack(Tensor weight)
    {
        if (weight.dtype != ScalarType.Float32 || weight.dim() != 2 || !weight.is_contiguous()) throw new ArgumentException("a contiguous float32 (n, k) weight");
        int n = checked((int)weight.Shape()[0]), k = checked((int)weight.Shape()[1]);
        if (n % 64 != 0) throw new ArgumentException($"the candidate takes whole groups of 64 outputs (n = {n})");
        var w = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(weight.bytes));
        var p = (float*)NativeMemory.AlignedAlloc((nuint)(4L * n * k), 64);
        for (int g = 0; g < n / 64; g++)
            for (int j = 0; j < 64; j++)
            {
                float* row = w + (long)(g * 64 + j) * k;
                float* dst = p + (long)g * k * 64 + j;
                for (int c = 0; c < k; c++) dst[(long)c * 64] = row[c];
            }
        return new KMajorCandidate(p, n, k);
    }

    /// <summary>y (m, n) = x (m, k) · Wᵀ.</summary>
    public static void Linear(Tensor x, KMajorCandidate w, Tensor y)
    {
        int m = checked((int)x.Shape()[0]);
        if (x.dtype != ScalarType.Float32 || !x.is_contiguous() || x.Shape()[1] != w.K || y.Shape()[0] != m || y.Shape()[1] != w.N || !y.is_contiguous())
            throw new ArgumentException("x (m, k) and y (m, n), contiguous float32");
        nint xp = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(x.bytes)), yp = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(y.bytes));
        int parts = Math.Min(w.Groups, Math.Max(1, (SpinPool.Shared.Helpers + 1) * SpinPool.PartsPerThread));
        SpinPool.Shared.Run(parts, p =>
        {
            for (int g = SpinPool.Bound(w.Groups, p, parts); g < SpinPool.Bound(w.Groups, p + 1, parts); g++)
            {
                int r = 0;
                for (; r + 6 <= m; r += 6) w.Rows<Six>(g, (float*)xp + (long)r * w.K, (float*)yp + (long)r * w.N);
                float* xr = (float*)xp + (long)r * w.K, yr = (float*)yp + (long)r * w.N;
                switch (m - r)
                {
                    case 1: w.Rows<One>(g, xr, yr); break;
                    case 2: w.Rows<Two>(g, xr, yr); break;
                    case 3: w.Rows<Three>(g, xr, yr); break;
                    case 4: w.Rows<Four>(g, xr, yr); break;
                    case 5: w.Rows<Five>(g, xr, yr); break;
                }
            }
        });
    }

    private interface IRows { static abstract int Value { get; } }
    private struct One : IRows { public static int Value => 1; }
    private struct Two : IRows { public static int Value => 2; }
    private struct Three : IRows { public static int Value => 3; }
    private struct Four : IRows { public static int Value => 4; }
    private struct Five : IRows { public static int Value => 5; }
    private struct Six : IRows { public static int Value => 6; }

    /// <summary>Group <paramref name="g"/>'s 64 outputs for <typeparamref name="TRows"/> input rows: four accumulators a row, column after column.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Rows<TRows>(int g, float* x, float* y) where TRows : struct, IRows
    {
        int m = TRows.Value, k = K, n = N;
        float* p = _packed + (long)g * k * 64;
        float* x0 = x, x1 = x + k, x2 = x + 2L * k, x3 = x + 3L * k, x4 = x + 4L * k, x5 = x + 5L * k;
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default, a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default, a30 = default, a31 = default, a32 = default, a33 = default;
        Vector512<float> a40 = default, a41 = default, a42 = default, a43 = default, a50 = default, a51 = default, a52 = default, a53 = default;
        for (int c = 0; c < k; c++, p += 64)
        {
            Sse.Prefetch0(p + 1024); // 4 KB ahead: sixteen columns of the group
            Sse.Prefetch0(p + 1040);
            Sse.Prefetch0(p + 1056);
            Sse.Prefetch0(p + 1072);
            var w0 = Vector512.Load(p);
            var w1 = Vector512.Load(p + 16);
            var w2 = Vector512.Load(p + 32);
            var w3 = Vector512.Load(p + 48);
            var b = Vector512.Create(x0[c]);
            a00 = Vector512.FusedMultiplyAdd(w0, b, a00); a01 = Vector512.FusedMultiplyAdd(w1, b, a01); a02 = Vector512.FusedMultiplyAdd(w2, b, a02); a03 = Vector512.FusedMultiplyAdd(w3, b, a03);
            if (m > 1) { b = Vector512.Create(x1[c]); a10 = Vector512.FusedMultiplyAdd(w0, b, a10); a11 = Vector512.FusedMultiplyAdd(w1, b, a11); a12 = Vector512.FusedMultiplyAdd(w2, b, a12); a13 = Vector512.FusedMultiplyAdd(w3, b, a13); }
            if (m > 2) { b = Vector512.Create(x2[c]); a20 = Vector512.FusedMultiplyAdd(w0, b, a20); a21 = Vector512.FusedMultiplyAdd(w1, b, a21); a22 = Vector512.FusedMultiplyAdd(w2, b, a22); a23 = Vector512.FusedMultiplyAdd(w3, b, a23); }
            if (m > 3) { b = Vector512.Create(x3[c]); a30 = Vector512.FusedMultiplyAdd(w0, b, a30); a31 = Vector512.FusedMultiplyAdd(w1, b, a31); a32 = Vector512.FusedMultiplyAdd(w2, b, a32); a33 = Vector512.FusedMultiplyAdd(w3, b, a33); }
            if (m > 4) { b = Vector512.Create(x4[c]); a40 = Vector512.FusedMultiplyAdd(w0, b, a40); a41 = Vector512.FusedMultiplyAdd(w1, b, a41); a42 = Vector512.FusedMultiplyAdd(w2, b, a42); a43 = Vector512.FusedMultiplyAdd(w3, b, a43); }
            if (m > 5) { b = Vector512.Create(x5[c]); a50 = Vector512.FusedMultiplyAdd(w0, b, a50); a51 = Vector512.FusedMultiplyAdd(w1, b, a51); a52 = Vector512.FusedMultiplyAdd(w2, b, a52); a53 = Vector512.FusedMultiplyAdd(w3, b, a53); }
        }
        float* o = y + g * 64;
        Store(o, a00, a01, a02, a03);
        if (m > 1) Store(o + n, a10, a11, a12, a13);
        if (m > 2) Store(o + 2L * n, a20, a21, a22, a23);
        if (m > 3) Store(o + 3L * n, a30, a31, a32, a33);
        if (m > 4) Store(o + 4L * n, a40, a41, a42, a43);
        if (m > 5) Store(o + 5L * n, a50, a51, a52, a53);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* o, Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> d)
    {
        a.Store(o);
        b.Store(o + 16);
        c.Store(o + 32);
        d.Store(o + 48);
    }

    public void Dispose()
    {
        if (_packed == null) return;
        NativeMemory.AlignedFree(_packed);
        _packed = null;
    }
}
