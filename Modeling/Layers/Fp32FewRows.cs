using ShardPipe.Modeling.Core;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// The few-row path of <see cref="Fp32Kernels"/> (AVX-512): inputs of 2..<see cref="FewRows"/> rows — a speculative
/// verification pass (k + 1 = 5 positions), a merged step of a few streams — read each weight row once, front to back,
/// as the one-row kernel does, and multiply it into every input row at once (one accumulator per input row). Each
/// (input row, weight row) sum is the one every AVX-512 float32 path computes (<see cref="RowSum"/>), so a verification
/// pass's products equal single-row decode's bit for bit. The register-blocked kernel (Fp32MultiRow.cs: four weight
/// rows in lock-step) takes more rows, where the arithmetic, not the reads, sets the pace, and few rows too long for L1
/// (<see cref="FewRowsFit"/>).
/// </summary>
public static unsafe partial class Fp32Kernels
{
    /// <summary>Inputs of 2..FewRows rows take the few-row path (where they fit L1: <see cref="FewRowsFit"/>).</summary>
    public const int FewRows = RowBlock;

    /// <summary>
    /// Elements ahead (32 KB) of the current position that the few-row path of <see cref="FarRows"/> or more input rows
    /// also prefetches into L2, besides the 4 KB into L1 that every kernel prefetches: their arithmetic takes longer per
    /// weight row than one row's, and the 4 KB alone left the reads and the arithmetic taking turns. From memory (96
    /// weights of 2048 × 768, the time over one row's, medians of 8–10 alternating rounds in one process), 4 rows 1.24 →
    /// 1.20, 5 rows 1.30–1.32 → 1.18–1.22, 6 rows 1.43 → 1.34 (16–64 KB: the same; 128 KB: worse); 2 rows 1.06 → 1.20 and
    /// 3 rows 1.14 → 1.19 lose by it, and one row's kernel gains nothing (0.99 either way). BENCHMARKS.md, session 14.
    /// </summary>
    private const int FewRowsFarAhead = 8192;

    /// <summary>Input rows from which the few-row path prefetches <see cref="FewRowsFarAhead"/> too.</summary>
    private const int FarRows = 4;

    /// <summary>Output columns [from, to) of all <paramref name="m"/> (2..<see cref="FewRows"/>) input rows (<see cref="FewRowsOf{TRows}"/>).</summary>
    private static void FewRowsPass(float* w, float* x, float* y, float* bias, int k, int n, int m, int from, int to)
    {
        switch (m)
        {
            case 2: FewRowsOf<Two>(w, x, y, bias, k, n, from, to); break;
            case 3: FewRowsOf<Three>(w, x, y, bias, k, n, from, to); break;
            case 4: FewRowsOf<Four>(w, x, y, bias, k, n, from, to); break;
            case 5: FewRowsOf<Five>(w, x, y, bias, k, n, from, to); break;
            case 6: FewRowsOf<Six>(w, x, y, bias, k, n, from, to); break;
            default: throw new ArgumentOutOfRangeException(nameof(m), m, $"the few-row path takes 2..{FewRows} input rows");
        }
    }

    /// <summary><see cref="FewRowsPass"/> for <typeparamref name="TRows"/> input rows: weight row after weight row (two at a time).</summary>
    private static void FewRowsOf<TRows>(float* w, float* x, float* y, float* bias, int k, int n, int from, int to) where TRows : struct, IRowCount
    {
        int o = from;
        if (PairedRows && TRows.Value >= PairRows)
            for (; o + 1 < to; o += 2) WeightPair<TRows>(w + (long)o * k, x, y + o, bias == null ? null : bias + o, k, n);
        for (; o < to; o++) WeightRow<TRows>(w + (long)o * k, x, y + o, bias == null ? null : bias + o, k, n);
    }

    /// <summary>Off: the few-row path takes one weight row at a time (<see cref="WeightRow{TRows}"/>) instead of two
    /// (<see cref="WeightPair{TRows}"/>) from <see cref="PairRows"/> input rows on (benchmarks and tests compare both; default on).</summary>
    public static bool PairedRows { get; set; } = true;

    /// <summary>
    /// Input rows from which the few-row path takes weight rows in pairs (4). Below it one weight row at a time is the
    /// faster: from memory, two threads, 2 and 3 rows of 768 columns took 1.05–1.10× one row's time a row at a time
    /// against 1.27–1.34× in pairs (256 weights 768→768, 96 of 768→2048, the 768→32000 head; medians of 10 alternating
    /// rounds); 4 rows the same either way (0.99), 5 rows 0.97 and 6 rows 0.91 with pairs; 2048→768 at 2 rows the same.
    /// Session 23 (pairs were measured at 5 rows only when they came in, session 19).
    /// </summary>
    private const int PairRows = 4;

    /// <summary>Elements ahead of a pair's rows (8 KB, at least the pair's own length) that <see cref="SlicePair{TRows, TPrefetch}"/>
    /// prefetches into L1, and (64 KB, with <see cref="FarRows"/> or more input rows) into L2: the two adjacent rows are one
    /// stream that moves two lines per 16 columns, so it prefetches two lines a step (a fixed distance per row, as the
    /// one-row slice takes, landed inside the pair's own second row for rows shorter than it).</summary>
    private const int PairNear = 2048, PairFar = 16384;

    /// <summary>Two adjacent weight rows (<paramref name="wr"/> and the next) against <typeparamref name="TRows"/> input rows, as
    /// <see cref="WeightRow{TRows}"/> for each: every input vector loaded serves both rows, so a pass of m rows issues
    /// 2 + m loads per 2·m FMAs instead of 1 + m per m (the few-row kernel is bound by its loads in cache).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization), SkipLocalsInit]
    private static void WeightPair<TRows>(float* wr, float* x, float* y, float* bias, int k, int n) where TRows : struct, IRowCount
    {
        int full = k & ~15;
        var held = stackalloc Vector512<float>[2 * RowBlock];
        if (TRows.Value >= FarRows) SlicePair<TRows, AheadAndFar>(wr, wr + k, x, k, full, held, held + RowBlock);
        else SlicePair<TRows, Ahead>(wr, wr + k, x, k, full, held, held + RowBlock);
        FinishRows<TRows>(held, wr, x, y, bias, k, n, full);
        FinishRows<TRows>(held + RowBlock, wr + k, x, y + 1, bias == null ? null : bias + 1, k, n, full);
    }

    /// <summary>
    /// Bytes of input rows (24 KB) up to which the few-row kernel takes them: it keeps its m input rows in L1 (48 KB here)
    /// while a weight row streams past them, and slowed sharply where they outgrew about half of it. Longer inputs — an MLP's
    /// down projection (k = 2048) from 3 rows on — take the register-blocked kernel (Fp32MultiRow.cs: four weight rows
    /// against the input rows packed, one pass over them per four weight rows), which beat the few-row kernel's column
    /// slices there (session 23, 96 weights 2048→768 from memory, medians of paired rounds in one process: 4 rows
    /// 0.98, 5 rows 0.90–0.94, 6 rows 0.86× the time; the float32 134M verification pass of 5 positions 0.96–1.00×, median
    /// 0.975). Below it the few-row kernel is the faster (k = 768: 5 rows on the register blocks 1.25× the time for
    /// 768→768, 1.01× for 768→2048). BENCHMARKS.md, session 23.
    /// </summary>
    private const int FewRowsBytes = 24 * 1024;

    /// <summary>Whether <paramref name="m"/> input rows of <paramref name="k"/> columns take the few-row kernel: 2..<see cref="FewRows"/>
    /// rows whose vector part fits <see cref="FewRowsBytes"/>.</summary>
    internal static bool FewRowsFit(int m, int k) => m >= 2 && m <= FewRows && 4L * m * (k & ~15) <= FewRowsBytes;

    /// <summary>One weight row (<paramref name="wr"/>, <paramref name="k"/> floats) against <typeparamref name="TRows"/> input
    /// rows: y[r·n] = Σᵢ wr[i]·x[r·k + i] (+ bias[0]), each in <see cref="RowSum"/>'s order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization), SkipLocalsInit]
    private static void WeightRow<TRows>(float* wr, float* x, float* y, float* bias, int k, int n) where TRows : struct, IRowCount
    {
        int full = k & ~15;
        var held = stackalloc Vector512<float>[RowBlock];
        if (TRows.Value >= FarRows) Slice<TRows, AheadAndFar>(wr, x, k, full, held);
        else Slice<TRows, Ahead>(wr, x, k, full, held);
        FinishRows<TRows>(held, wr, x, y, bias, k, n, full);
    }

    /// <summary>What <see cref="Slice{TRows, TPrefetch}"/> prefetches, as a type (a constant in each one's code): 4 KB ahead
    /// in the row into L1 (<see cref="Near"/>), and 32 KB ahead into L2 (<see cref="Far"/>, <see cref="FewRowsFarAhead"/>).</summary>
    private interface IRowPrefetch
    {
        static abstract bool Near { get; }
        static abstract bool Far { get; }
    }
    private struct Ahead : IRowPrefetch { public static bool Near => true; public static bool Far => false; }
    private struct AheadAndFar : IRowPrefetch { public static bool Near => true; public static bool Far => true; }

    /// <summary>
    /// <see cref="Slice{TRows, TPrefetch}"/> for two weight rows at once (<paramref name="w0"/>, <paramref name="w1"/>):
    /// each input vector is loaded once for both, and each (weight row, input row) accumulator takes its 16-float products
    /// in the same column order as the one-row slice — bit for bit the same sums.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SlicePair<TRows, TPrefetch>(float* w0, float* w1, float* x, int k, int full, Vector512<float>* held0, Vector512<float>* held1)
        where TRows : struct, IRowCount where TPrefetch : struct, IRowPrefetch
    {
        int rows = TRows.Value;
        long nearA = Math.Max(PairNear, 2L * k), farA = PairFar;
        float* x0 = x, x1 = x + 1L * k, x2 = x + 2L * k, x3 = x + 3L * k, x4 = x + 4L * k, x5 = x + 5L * k;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default, b4 = default, b5 = default;
        for (int i = 0; i < full; i += 16)
        {
            if (TPrefetch.Near)
            {
                Sse.Prefetch0(w0 + 2 * i + nearA);
                Sse.Prefetch0(w0 + 2 * i + nearA + 16);
            }
            if (TPrefetch.Far)
            {
                Sse.Prefetch1(w0 + 2 * i + farA);
                Sse.Prefetch1(w0 + 2 * i + farA + 16);
            }
            var v = Vector512.Load(w0 + i);
            var u = Vector512.Load(w1 + i);
            var xv = Vector512.Load(x0 + i); a0 = Vector512.FusedMultiplyAdd(v, xv, a0); b0 = Vector512.FusedMultiplyAdd(u, xv, b0);
            xv = Vector512.Load(x1 + i); a1 = Vector512.FusedMultiplyAdd(v, xv, a1); b1 = Vector512.FusedMultiplyAdd(u, xv, b1);
            if (rows > 2) { xv = Vector512.Load(x2 + i); a2 = Vector512.FusedMultiplyAdd(v, xv, a2); b2 = Vector512.FusedMultiplyAdd(u, xv, b2); }
            if (rows > 3) { xv = Vector512.Load(x3 + i); a3 = Vector512.FusedMultiplyAdd(v, xv, a3); b3 = Vector512.FusedMultiplyAdd(u, xv, b3); }
            if (rows > 4) { xv = Vector512.Load(x4 + i); a4 = Vector512.FusedMultiplyAdd(v, xv, a4); b4 = Vector512.FusedMultiplyAdd(u, xv, b4); }
            if (rows > 5) { xv = Vector512.Load(x5 + i); a5 = Vector512.FusedMultiplyAdd(v, xv, a5); b5 = Vector512.FusedMultiplyAdd(u, xv, b5); }
        }
        held0[0] = a0; held0[1] = a1; held1[0] = b0; held1[1] = b1;
        if (rows > 2) { held0[2] = a2; held1[2] = b2; }
        if (rows > 3) { held0[3] = a3; held1[3] = b3; }
        if (rows > 4) { held0[4] = a4; held1[4] = b4; }
        if (rows > 5) { held0[5] = a5; held1[5] = b5; }
    }

    /// <summary>
    /// The vector part (<paramref name="full"/> columns, a multiple of 16) of one weight row against
    /// <typeparamref name="TRows"/> input rows: each row's accumulator (zero to start) takes the 16-float products in column
    /// order, four chunks a pass (written out: the JIT does not unroll loops), and goes to <paramref name="held"/> (16 floats
    /// a row). The accumulators live in registers through the loop.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)] // into WeightRow: no call per weight row
    private static void Slice<TRows, TPrefetch>(float* wr, float* x, int k, int full, Vector512<float>* held)
        where TRows : struct, IRowCount where TPrefetch : struct, IRowPrefetch
    {
        int rows = TRows.Value;
        float* x0 = x, x1 = x + 1L * k, x2 = x + 2L * k, x3 = x + 3L * k, x4 = x + 4L * k, x5 = x + 5L * k;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default;
        int i = 0;
        for (; i + 64 <= full; i += 64)
        {
            if (TPrefetch.Near)
            {
                Sse.Prefetch0(wr + i + PrefetchAhead); // past a row's end this reaches the next rows: still ahead of use
                Sse.Prefetch0(wr + i + PrefetchAhead + 16);
                Sse.Prefetch0(wr + i + PrefetchAhead + 32);
                Sse.Prefetch0(wr + i + PrefetchAhead + 48);
            }
            if (TPrefetch.Far)
            {
                Sse.Prefetch1(wr + i + FewRowsFarAhead);
                Sse.Prefetch1(wr + i + FewRowsFarAhead + 16);
                Sse.Prefetch1(wr + i + FewRowsFarAhead + 32);
                Sse.Prefetch1(wr + i + FewRowsFarAhead + 48);
            }
            var v0 = Vector512.Load(wr + i);
            var v1 = Vector512.Load(wr + i + 16);
            var v2 = Vector512.Load(wr + i + 32);
            var v3 = Vector512.Load(wr + i + 48);
            a0 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x0 + i), a0);
            a1 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x1 + i), a1);
            if (rows > 2) a2 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x2 + i), a2);
            if (rows > 3) a3 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x3 + i), a3);
            if (rows > 4) a4 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x4 + i), a4);
            if (rows > 5) a5 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x5 + i), a5);
            a0 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x0 + i + 16), a0);
            a1 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x1 + i + 16), a1);
            if (rows > 2) a2 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x2 + i + 16), a2);
            if (rows > 3) a3 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x3 + i + 16), a3);
            if (rows > 4) a4 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x4 + i + 16), a4);
            if (rows > 5) a5 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x5 + i + 16), a5);
            a0 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x0 + i + 32), a0);
            a1 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x1 + i + 32), a1);
            if (rows > 2) a2 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x2 + i + 32), a2);
            if (rows > 3) a3 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x3 + i + 32), a3);
            if (rows > 4) a4 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x4 + i + 32), a4);
            if (rows > 5) a5 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x5 + i + 32), a5);
            a0 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x0 + i + 48), a0);
            a1 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x1 + i + 48), a1);
            if (rows > 2) a2 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x2 + i + 48), a2);
            if (rows > 3) a3 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x3 + i + 48), a3);
            if (rows > 4) a4 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x4 + i + 48), a4);
            if (rows > 5) a5 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x5 + i + 48), a5);
        }
        for (; i < full; i += 16)
        {
            var v = Vector512.Load(wr + i);
            a0 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x0 + i), a0);
            a1 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x1 + i), a1);
            if (rows > 2) a2 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x2 + i), a2);
            if (rows > 3) a3 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x3 + i), a3);
            if (rows > 4) a4 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x4 + i), a4);
            if (rows > 5) a5 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x5 + i), a5);
        }
        held[0] = a0;
        held[1] = a1;
        if (rows > 2) held[2] = a2;
        if (rows > 3) held[3] = a3;
        if (rows > 4) held[4] = a4;
        if (rows > 5) held[5] = a5;
    }

    /// <summary>The end of one weight row's sums (<paramref name="held"/>: its accumulators after column <paramref name="full"/>):
    /// each reduced (<see cref="Sums"/>), then <see cref="RowSum"/>'s scalar tail and bias, into y[r·n].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining), SkipLocalsInit]
    private static void FinishRows<TRows>(Vector512<float>* held, float* wr, float* x, float* y, float* bias, int k, int n, int full) where TRows : struct, IRowCount
    {
        int rows = TRows.Value;
        float* sums = stackalloc float[8];
        Sums(held[0], held[1], rows > 2 ? held[2] : held[0], rows > 3 ? held[3] : held[0]).Store(sums);
        Sums(rows > 4 ? held[4] : held[0], rows > 5 ? held[5] : held[0], held[0], held[0]).Store(sums + 4);
        for (int r = 0; r < rows; r++) y[(long)r * n] = RowSum(sums[r], wr, x + (long)r * k, bias, k, full);
    }
}
