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
/// rows in lock-step) takes more rows, where the arithmetic, not the reads, sets the pace.
/// </summary>
public static unsafe partial class Fp32Kernels
{
    /// <summary>Inputs of 2..FewRows rows take the few-row path.</summary>
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

    /// <summary><see cref="FewRowsPass"/> for <typeparamref name="TRows"/> input rows: weight row after weight row, or in
    /// column slices (<see cref="TiledRows{TRows}"/>) where the input rows outgrow <see cref="TileAboveBytes"/>.</summary>
    private static void FewRowsOf<TRows>(float* w, float* x, float* y, float* bias, int k, int n, int from, int to) where TRows : struct, IRowCount
    {
        int slice = InputSlice(TRows.Value, k);
        if (slice < (k & ~15))
        {
            TiledRows<TRows>(w, x, y, bias, k, n, from, to, slice);
            return;
        }
        int o = from;
        if (PairedRows)
            for (; o + 1 < to; o += 2) WeightPair<TRows>(w + (long)o * k, x, y + o, bias == null ? null : bias + o, k, n);
        for (; o < to; o++) WeightRow<TRows>(w + (long)o * k, x, y + o, bias == null ? null : bias + o, k, n);
    }

    /// <summary>Off: the few-row path takes one weight row at a time (<see cref="WeightRow{TRows}"/>) instead of two
    /// (<see cref="WeightPair{TRows}"/>; benchmarks and tests compare both; default on).</summary>
    public static bool PairedRows { get; set; } = true;

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
        if (TRows.Value >= FarRows) SlicePair<TRows, AheadAndFar>(wr, wr + k, x, k, 0, full, held, held + RowBlock, false);
        else SlicePair<TRows, Ahead>(wr, wr + k, x, k, 0, full, held, held + RowBlock, false);
        FinishRows<TRows>(held, wr, x, y, bias, k, n, full);
        FinishRows<TRows>(held + RowBlock, wr + k, x, y + 1, bias == null ? null : bias + 1, k, n, full);
    }

    /// <summary>
    /// Bytes of the input rows that one slice of the columns may span (8 KB). The few-row kernel keeps its m input rows in
    /// L1 (48 KB here) while a weight row streams past them, and from memory it slowed sharply where they outgrew about
    /// half of it: an MLP's down projection (k = 2048) at 5 rows (40 KB) took 1.58–1.62× one row's time, at 3 rows (24 KB)
    /// 1.22× (96 weights of 768 × 2048, medians of 6–10 alternating rounds in one process; 4 rows 1.35–1.41×, 6 rows 2.0×).
    /// In slices (<see cref="TiledRows{TRows}"/>): 16 KB 1.45×, 8 KB 1.25–1.33× in the same rounds (4 KB and blocks of 4–16
    /// weight rows: within the noise). BENCHMARKS.md, session 14.
    /// </summary>
    private const int InputSliceBytes = 8 * 1024;

    /// <summary>Input rows of more bytes than this (24 KB) take the sliced kernel; below it the untiled one is faster (k = 768,
    /// 6 rows, 18 KB: 1.33× one row untiled, 1.81× in 8 KB slices; 5 rows, 15 KB: 1.17× against 1.55×).</summary>
    private const int TileAboveBytes = 24 * 1024;

    /// <summary>Weight rows that <see cref="TiledRows{TRows}"/> takes through every slice before the next rows (64 KB of a
    /// down projection's weights: the block stays in L2 from its first slice to its last).</summary>
    private const int TileRows = 8;

    /// <summary>Columns per slice for <paramref name="m"/> input rows of <paramref name="k"/> columns: all of the vector part
    /// up to <see cref="TileAboveBytes"/>, else near-equal slices of a multiple of 64 columns of at most about
    /// <see cref="InputSliceBytes"/>.</summary>
    internal static int InputSlice(int m, int k)
    {
        int full = k & ~15;
        long bytes = 4L * m * full;
        if (bytes <= TileAboveBytes) return full;
        int slices = (int)((bytes + InputSliceBytes - 1) / InputSliceBytes);
        return Math.Max(64, (full / slices + 63) & ~63);
    }

    /// <summary>
    /// <see cref="WeightRow{TRows}"/>'s sums for weight rows [from, to) with the columns cut into slices of
    /// <paramref name="slice"/> (a multiple of 16) so that the input rows' part in use stays in L1: for each
    /// <see cref="TileRows"/> weight rows, slice after slice, each row's accumulators carried from one slice to the next
    /// in order — so every sum adds the same 16-float products in the same order as the untiled kernel (and the one-row
    /// kernel, <see cref="RowSum"/>), bit for bit. The next block's weights are prefetched into L2 while this block runs
    /// (front to back, a line per 16 columns done: a whole block ahead of their use, which goes slice by slice); the L1
    /// prefetch of the untiled kernel ahead in a row made no difference here (from L2).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization), SkipLocalsInit]
    private static void TiledRows<TRows>(float* w, float* x, float* y, float* bias, int k, int n, int from, int to, int slice) where TRows : struct, IRowCount
    {
        int full = k & ~15;
        var carried = stackalloc Vector512<float>[TileRows * RowBlock];
        // The first block's rows into L2 now; each block then fetches the next as it goes (one line per 16 columns done).
        for (float* l = w + (long)from * k, end = w + (long)Math.Min(to, from + TileRows) * k; l < end; l += 16) Sse.Prefetch1(l);
        for (int o0 = from; o0 < to; o0 += TileRows)
        {
            int count = Math.Min(TileRows, to - o0);
            float* next = w + (long)(o0 + count) * k, stop = w + (long)Math.Min(to, o0 + count + TileRows) * k;
            for (int c0 = 0; c0 < full; c0 += slice)
            {
                int g = 0, end = Math.Min(full, c0 + slice);
                if (PairedRows)
                    for (; g + 1 < count; g += 2)
                    {
                        next = PrefetchNext(next, stop, end - c0);
                        SlicePair<TRows, NoPrefetch>(w + (long)(o0 + g) * k, w + (long)(o0 + g + 1) * k, x, k, c0, end, carried + g * RowBlock, carried + (g + 1) * RowBlock, c0 > 0);
                    }
                for (; g < count; g++)
                    next = Slice<TRows, NextBlock>(w + (long)(o0 + g) * k, x, k, c0, end, carried + g * RowBlock, c0 > 0, next, stop);
            }
            for (int g = 0; g < count; g++)
            {
                int o = o0 + g;
                FinishRows<TRows>(carried + g * RowBlock, w + (long)o * k, x, y + o, bias == null ? null : bias + o, k, n, full);
            }
        }
    }

    /// <summary>One weight row (<paramref name="wr"/>, <paramref name="k"/> floats) against <typeparamref name="TRows"/> input
    /// rows: y[r·n] = Σᵢ wr[i]·x[r·k + i] (+ bias[0]), each in <see cref="RowSum"/>'s order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization), SkipLocalsInit]
    private static void WeightRow<TRows>(float* wr, float* x, float* y, float* bias, int k, int n) where TRows : struct, IRowCount
    {
        int full = k & ~15;
        var held = stackalloc Vector512<float>[RowBlock];
        if (TRows.Value >= FarRows) Slice<TRows, AheadAndFar>(wr, x, k, 0, full, held, false, null, null);
        else Slice<TRows, Ahead>(wr, x, k, 0, full, held, false, null, null);
        FinishRows<TRows>(held, wr, x, y, bias, k, n, full);
    }

    /// <summary>What <see cref="Slice{TRows, TPrefetch}"/> prefetches, as a type (a constant in each one's code): 4 KB ahead
    /// in the row into L1 (<see cref="Near"/>), 32 KB ahead into L2 (<see cref="Far"/>, <see cref="FewRowsFarAhead"/>), or
    /// the next block of rows into L2 a line per 16 columns (<see cref="Next"/>, <see cref="TiledRows{TRows}"/>).</summary>
    private interface IRowPrefetch
    {
        static abstract bool Near { get; }
        static abstract bool Far { get; }
        static abstract bool Next { get; }
    }
    private struct Ahead : IRowPrefetch { public static bool Near => true; public static bool Far => false; public static bool Next => false; }
    private struct AheadAndFar : IRowPrefetch { public static bool Near => true; public static bool Far => true; public static bool Next => false; }
    private struct NextBlock : IRowPrefetch { public static bool Near => false; public static bool Far => false; public static bool Next => true; }
    private struct NoPrefetch : IRowPrefetch { public static bool Near => false; public static bool Far => false; public static bool Next => false; }

    /// <summary>The next block's prefetch for two rows' slice of <paramref name="columns"/> (as <see cref="Slice{TRows, TPrefetch}"/>
    /// with <see cref="NextBlock"/> issues it for each row: a line per 16 columns done).</summary>
    private static float* PrefetchNext(float* next, float* stop, int columns)
    {
        for (int c = 0; c < 2 * columns && next < stop; c += 16, next += 16) Sse.Prefetch1(next);
        return next;
    }

    /// <summary>
    /// <see cref="Slice{TRows, TPrefetch}"/> for two weight rows at once (<paramref name="w0"/>, <paramref name="w1"/>):
    /// each input vector is loaded once for both, and each (weight row, input row) accumulator takes its 16-float products
    /// in the same column order as the one-row slice — bit for bit the same sums.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SlicePair<TRows, TPrefetch>(float* w0, float* w1, float* x, int k, int from, int to, Vector512<float>* held0, Vector512<float>* held1, bool carry)
        where TRows : struct, IRowCount where TPrefetch : struct, IRowPrefetch
    {
        int rows = TRows.Value;
        long nearA = Math.Max(PairNear, 2L * k), farA = PairFar;
        float* x0 = x, x1 = x + 1L * k, x2 = x + 2L * k, x3 = x + 3L * k, x4 = x + 4L * k, x5 = x + 5L * k;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default, b4 = default, b5 = default;
        if (carry)
        {
            a0 = held0[0]; a1 = held0[1]; b0 = held1[0]; b1 = held1[1];
            if (rows > 2) { a2 = held0[2]; b2 = held1[2]; }
            if (rows > 3) { a3 = held0[3]; b3 = held1[3]; }
            if (rows > 4) { a4 = held0[4]; b4 = held1[4]; }
            if (rows > 5) { a5 = held0[5]; b5 = held1[5]; }
        }
        for (int i = from; i < to; i += 16)
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
    /// Columns [<paramref name="from"/>, <paramref name="to"/>) (multiples of 16) of one weight row against
    /// <typeparamref name="TRows"/> input rows: each row's accumulator (in <paramref name="held"/>, 16 floats a row; zero
    /// to start unless <paramref name="carry"/>) takes the 16-float products in column order, four chunks a pass (written
    /// out: the JIT does not unroll loops), and goes back to <paramref name="held"/>. The accumulators live in registers
    /// through the loop and touch memory once a slice. Returns <paramref name="next"/> moved past what it prefetched.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)] // into WeightRow and TiledRows: no call per weight row
    private static float* Slice<TRows, TPrefetch>(float* wr, float* x, int k, int from, int to, Vector512<float>* held, bool carry, float* next, float* stop)
        where TRows : struct, IRowCount where TPrefetch : struct, IRowPrefetch
    {
        int rows = TRows.Value;
        float* x0 = x, x1 = x + 1L * k, x2 = x + 2L * k, x3 = x + 3L * k, x4 = x + 4L * k, x5 = x + 5L * k;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default;
        if (carry)
        {
            a0 = held[0];
            a1 = held[1];
            if (rows > 2) a2 = held[2];
            if (rows > 3) a3 = held[3];
            if (rows > 4) a4 = held[4];
            if (rows > 5) a5 = held[5];
        }
        int i = from;
        for (; i + 64 <= to; i += 64)
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
            if (TPrefetch.Next && next < stop)
            {
                Sse.Prefetch1(next);
                Sse.Prefetch1(next + 16);
                Sse.Prefetch1(next + 32);
                Sse.Prefetch1(next + 48);
                next += 64;
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
        for (; i < to; i += 16)
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
        return next;
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
