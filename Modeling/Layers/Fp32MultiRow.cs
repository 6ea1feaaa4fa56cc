using ShardPipe.Modeling.Core;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// The multi-row half of <see cref="Fp32Kernels"/>: inputs of 2..<see cref="Fp32Kernels.MaxRows"/> rows (a speculative
/// verification pass, a merged serving step). A register-blocked micro-kernel takes four weight rows and up to
/// <see cref="RowBlock"/> input rows at once: each 16-float load of a weight row is multiplied into the accumulators of
/// every input row of the block, so the weights stream from memory once (prefetched by all the blocks of the rows before
/// them) and the arithmetic, not the reads, sets the pace. More input rows than a block are cut into near-equal blocks that reuse the
/// same four weight rows from cache. The output rows are split over <see cref="SpinPool"/> as for one row.
/// </summary>
public static unsafe partial class Fp32Kernels
{
    /// <summary>Input rows per register block on the AVX-512 path: 4 weight rows × 6 input rows = 24 accumulators.</summary>
    public const int RowBlock = 6;

    /// <summary>Input rows per register block on the <see cref="Vector{T}"/> path: 4 × 2 = 8 accumulators (AVX2 has 16 registers).</summary>
    public const int PortableRowBlock = 2;

    /// <summary>Output columns [from, to) of all <paramref name="m"/> ≥ 2 input rows: for each four weight rows, the input rows
    /// in near-equal blocks of at most <see cref="RowBlock"/> (the first block reads the four rows from memory, the others find
    /// them in cache, and all of them prefetch the next four: <see cref="SpreadPrefetch"/>); the last 1–3 weight rows of the
    /// range take the single-row kernel per input row.</summary>
    private static void MultiRows(float* w, float* x, float* y, float* bias, int k, int n, int m, int from, int to, bool portable, long job, float* input, int inputRows)
    {
        int block = portable ? PortableRowBlock : RowBlock;
        int blocks = (m + block - 1) / block;
        int o = from;
        float* packed = portable ? null : PackedInputs(x, k, m, blocks, job, input, inputRows);
        // Each block prefetches from its own slice of the next four weight rows (SpreadPrefetch), moving `lines` lines an
        // iteration (lines ≥ 4 ÷ blocks, so the next group's 4k floats stream in across the blocks of this one).
        int lines = blocks == 1 ? 4 : blocks <= 3 ? 2 : 1, slice = (4 * k / blocks) & ~15;
        for (; o + 4 <= to; o += 4)
        {
            int r = 0;
            float* w0 = w + (long)o * k;
            for (int c = 0; c < blocks; c++)
            {
                int size = m / blocks + (c < m % blocks ? 1 : 0);
                float* xr = x + (long)r * k, yr = y + (long)r * n;
                if (portable) PortableBlock(size, w, xr, yr, bias, k, n, o, c == 0);
                else if (SpreadPrefetch) Block(size, lines == 1 ? 1 : 4, w, packed + (long)r * (k & ~15), xr, yr, bias, k, n, o, w0 + 4L * k + (long)c * slice, 16 * lines, 16);
                else Block(size, 4, w, packed + (long)r * (k & ~15), xr, yr, bias, k, n, o, w0 + (c == 0 ? Math.Max(PrefetchAhead, 4 * k) : 0), 16, k);
                r += size;
            }
        }
        if (o < to)
            for (int r = 0; r < m; r++)
            {
                if (portable) PortableRows(w, x + (long)r * k, y + (long)r * n, bias, k, o, to);
                else Fp32Rows(w, x + (long)r * k, y + (long)r * n, bias, k, o, to);
            }
    }

    /// <summary>This thread's buffer for <see cref="PackedInputs"/> (grown as needed, kept for the thread's life).</summary>
    [ThreadStatic] private static nint _packed;
    [ThreadStatic] private static long _packedFloats;
    /// <summary>What this thread's buffer holds: the first <see cref="_packedRows"/> rows (k = <see cref="_packedK"/>) of
    /// the input at <see cref="_packedFrom"/>, packed pass by pass for job <see cref="_packedJob"/> (0: nothing reusable).</summary>
    [ThreadStatic] private static long _packedJob;
    [ThreadStatic] private static nint _packedFrom;
    [ThreadStatic] private static int _packedRows, _packedK;

    /// <summary>The most a thread keeps packed of a job's input of several passes (a prefill's): 8 MB (512 rows of 4,096).
    /// A longer input is packed pass by pass for each part, as before session 24.</summary>
    private const long MaxPackedBytes = 8L << 20;

    /// <summary>
    /// The input rows' vector part (columns below k rounded down to 16) rearranged block by block, as
    /// <see cref="MultiRows"/> cuts them (near-equal blocks of at most <see cref="RowBlock"/> rows): a block of s rows
    /// starting at row r lies at r·full, column chunk c of its row j at (c·s + j)·16. The register block then reads
    /// its s input vectors of a chunk from one pointer at fixed offsets, where s row pointers did not fit the
    /// registers beside the four weight rows (the JIT reloaded five of them from the stack every 16 columns). From memory,
    /// 96 weights of 2048 × 768 (medians of 6–10 alternating rounds in one process): 16 rows 30.0–30.3 → 24.7–24.8 ms,
    /// 12 rows 30.4 → 28.9, 32 rows 45.6 → 44.4, 64 rows 74.7 → 73.2; 768 × 2048 at 16 rows 28.5 → 29.7 (the copy's
    /// share). bench serve, 2 alternating pairs: ITL p50 37.9 → 33.5 and 45.8 → 37.0 ms, aggregate 335 → 365 and 273 → 334
    /// tokens/s. BENCHMARKS.md, session 14.
    /// <para>A thread packs a job's rows once for all the parts of it that it runs (<see cref="PackOncePerJob"/>): the
    /// parts of a job share its input, and a prefill's passes (<see cref="Fp32LongInputs"/>) lie one after another in the
    /// buffer, up to <see cref="MaxPackedBytes"/>. Until session 24 every part packed its rows again (a copy of m × k floats
    /// each time, ≈ 4 % of a down projection's part at 16 rows; 5 % of a prefill's samples). Alternating in one process,
    /// medians of paired ratios: batched decode of 16 rows 0.970–0.988 the time a round, 8 rows 0.974; the merged prefill of
    /// 16 × 30 positions 0.971–0.982, of one 512-token prompt 0.971; the 5-position verification pass 0.99–1.01 (its
    /// few-row products do not pack).</para>
    /// </summary>
    private static float* PackedInputs(float* x, int k, int m, int blocks, long job, float* input, int inputRows)
    {
        int full = k & ~15;
        if ((long)inputRows * full * 4 > MaxPackedBytes)
        {
            input = x; // too long to keep: this pass alone
            inputRows = m;
        }
        long offset = (x - input) / k; // the pass's first row in the job's input
        bool same = job != 0 && PackOncePerJob && _packedJob == job && _packedFrom == (nint)input && _packedK == k;
        if (same && offset + m <= _packedRows)
            return (float*)_packed + offset * full; // another part of the same job on this thread: these rows are packed
        long need = (long)inputRows * full;
        if (!same || _packedFloats < need) (_packedJob, _packedFrom, _packedK, _packedRows) = (job, (nint)input, k, 0);
        if (_packedFloats < need)
        {
            if (_packed != 0) System.Runtime.InteropServices.NativeMemory.AlignedFree((void*)_packed);
            _packed = (nint)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(need * 4), 64);
            _packedFloats = need;
        }
        if (offset == _packedRows) _packedRows = (int)(offset + m); // the passes run in order: the packed rows grow from the first
        float* dst = (float*)_packed + offset * full;
        int r = 0;
        for (int c = 0; c < blocks; c++)
        {
            int size = m / blocks + (c < m % blocks ? 1 : 0);
            float* d = dst + (long)r * full;
            for (int i = 0; i < full; i += 16)
                for (int j = 0; j < size; j++, d += 16)
                    Vector512.Load(x + (long)(r + j) * k + i).Store(d);
            r += size;
        }
        return dst;
    }

    /// <summary>
    /// How the register blocks prefetch the next four weight rows (which lie back to back: 4k floats). On (the default):
    /// block c of b prefetches slice c of them onwards, so the reads go out evenly while all b blocks of the current four
    /// rows run: four prefetches an iteration one line apart, moving 4 lines an iteration for one block and 2 for two or
    /// three (so each covers two slices: the next rows are asked for earlier); one prefetch moving a line an iteration
    /// for four blocks and more (a prefill's passes, where the weights are mostly in cache and the prefetches cost issue
    /// slots). Off (before session 21): the first block prefetched all of them, four lines an iteration, and the later
    /// blocks the lines they read — a burst of misses a third of the time at 16 rows, then nothing. Alternating
    /// generations in one process (float32 134M Llama, batched greedy decode, medians of paired on/off ratios): 16 rows
    /// 1.134–1.149 (592 → 679 tokens/s), 12 rows 1.141–1.153, 8 rows 1.083, 32 rows 1.016–1.068; a 16 × 30 prefill
    /// 0.97× the time (noisy); one thread in cache at 60 rows, 2304 × 768: 142–147 → 164–166 GFLOP/s. Two prefetches an
    /// iteration at 16 rows instead of four: 0.92×. Two groups ahead: no better than none; prefetcht1 instead of
    /// prefetcht0: 0.91×. Outputs are unchanged (a prefetch reads nothing into the sums).
    /// </summary>
    internal static bool SpreadPrefetch { get; set; } = true;

    /// <summary>On: a thread packs a job's input rows once for all the parts of it that it runs (the parts of a job —
    /// all its weights' output rows, cut into <see cref="SpinPool.PartsPerThread"/> parts a thread — share one input;
    /// <see cref="PackedInputs"/>); off: once per part and pass, as before session 24 (benchmarks compare both).</summary>
    public static bool PackOncePerJob { get; set; } = true;

    /// <summary>
    /// Where k is a multiple of 16 (every shape of the Llama models here), the register block ends each input row's four
    /// outputs as one vector: the four reductions plus the four biases, stored at once — where they went through a
    /// buffer on the stack and a scalar end per output (<see cref="Fp32Kernels.FinishFour"/>: a tail loop that runs no
    /// column, a bias check, a store), ≈ 8 % of the block's samples in a perf profile at 16 rows. The same bits: the
    /// bias is added lane by lane as the scalar end adds it, and none is added where there is none (−0 stays −0).
    /// Alternating generations in one process (float32 134M Llama, 16 rows of batched greedy decode, 12 pairs): 1.053
    /// (1.019–1.084, every pair above 1; 718 → 758 tokens/s); a 16 × 30 prefill ≈ 0.96× the time. Off: the scalar end
    /// everywhere (benchmarks compare). Session 22.
    /// </summary>
    internal static bool VectorEnds { get; set; } = true;

    /// <summary>A register block of <paramref name="rows"/> input rows that issues <paramref name="prefetches"/> prefetches
    /// an iteration (1 or 4) at pf, pf + gap, … (pf moving <paramref name="step"/> floats an iteration).</summary>
    private static void Block(int rows, int prefetches, float* w, float* packed, float* x, float* y, float* bias, int k, int n, int o, float* pf, int step, int gap)
    {
        switch (prefetches)
        {
            case 1: Block<One>(rows, w, packed, x, y, bias, k, n, o, pf, step, gap); break;
            case 4: Block<Four>(rows, w, packed, x, y, bias, k, n, o, pf, step, gap); break;
            default: throw new ArgumentOutOfRangeException(nameof(prefetches), prefetches, "a register block issues 1 or 4 prefetches an iteration");
        }
    }

    private static void Block<TPrefetches>(int rows, float* w, float* packed, float* x, float* y, float* bias, int k, int n, int o, float* pf, int step, int gap) where TPrefetches : struct, IRowCount
    {
        switch (rows)
        {
            case 1: Block4<One, TPrefetches>(w, packed, x, y, bias, k, n, o, pf, step, gap); break;
            case 2: Block4<Two, TPrefetches>(w, packed, x, y, bias, k, n, o, pf, step, gap); break;
            case 3: Block4<Three, TPrefetches>(w, packed, x, y, bias, k, n, o, pf, step, gap); break;
            case 4: Block4<Four, TPrefetches>(w, packed, x, y, bias, k, n, o, pf, step, gap); break;
            case 5: Block4<Five, TPrefetches>(w, packed, x, y, bias, k, n, o, pf, step, gap); break;
            case 6: Block4<Six, TPrefetches>(w, packed, x, y, bias, k, n, o, pf, step, gap); break;
            default: throw new ArgumentOutOfRangeException(nameof(rows), rows, $"a register block takes 1..{RowBlock} input rows");
        }
    }

    /// <summary>Four weight rows [o, o+4) against <typeparamref name="TRows"/> input rows at once (AVX-512): each 16-float load of a
    /// weight row feeds the accumulators of every input row, so a block of weights is read once for up to
    /// <see cref="RowBlock"/> input rows; 4 × 6 = 24 accumulators, the 4 weight vectors and an input vector fit the 32 zmm registers.
    /// The input rows come packed (<see cref="PackedInputs"/>: one pointer, fixed offsets); the unpacked rows
    /// <paramref name="x"/> serve the scalar tail.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block4<TRows, TPrefetches>(float* w, float* packed, float* x, float* y, float* bias, int k, int n, int o, float* pf, int step, int gap) where TRows : struct, IRowCount where TPrefetches : struct, IRowCount
    {
        int rows = TRows.Value;
        float* sums = stackalloc float[4 * RowBlock];
        // TPrefetches (1 or 4) prefetches an iteration at pf, pf + gap, pf + 2·gap, pf + 3·gap, pf moving step floats (SpreadPrefetch: a
        // slice of the next four rows; off: the same place in the next four rows for the first block, the line it reads
        // for the others). No branch in the loop: one would split it and spill the accumulators. The prefetch place comes
        // as scalars: a struct of them was stored field by field and loaded as one vector before each call, a store-forwarding
        // stall that cost ≈ 5 % of a 16-row step.
        float* w0 = w + (long)o * k, w1 = w0 + k, w2 = w1 + k, w3 = w2 + k;
        float* u = packed;
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
        Vector512<float> a40 = default, a41 = default, a42 = default, a43 = default;
        Vector512<float> a50 = default, a51 = default, a52 = default, a53 = default;
        int i = 0;
        for (; i + 16 <= k; i += 16, u += 16 * rows, pf += step)
        {
            Sse.Prefetch0(pf);
            if (TPrefetches.Value > 1)
            {
                Sse.Prefetch0(pf + gap);
                Sse.Prefetch0(pf + 2 * gap);
                Sse.Prefetch0(pf + 3 * gap);
            }
            var v0 = Vector512.Load(w0 + i);
            var v1 = Vector512.Load(w1 + i);
            var v2 = Vector512.Load(w2 + i);
            var v3 = Vector512.Load(w3 + i);
            var u0 = Vector512.Load(u);
            a00 = Vector512.FusedMultiplyAdd(v0, u0, a00);
            a01 = Vector512.FusedMultiplyAdd(v1, u0, a01);
            a02 = Vector512.FusedMultiplyAdd(v2, u0, a02);
            a03 = Vector512.FusedMultiplyAdd(v3, u0, a03);
            if (rows > 1)
            {
                var u1 = Vector512.Load(u + 16);
                a10 = Vector512.FusedMultiplyAdd(v0, u1, a10);
                a11 = Vector512.FusedMultiplyAdd(v1, u1, a11);
                a12 = Vector512.FusedMultiplyAdd(v2, u1, a12);
                a13 = Vector512.FusedMultiplyAdd(v3, u1, a13);
            }
            if (rows > 2)
            {
                var u2 = Vector512.Load(u + 32);
                a20 = Vector512.FusedMultiplyAdd(v0, u2, a20);
                a21 = Vector512.FusedMultiplyAdd(v1, u2, a21);
                a22 = Vector512.FusedMultiplyAdd(v2, u2, a22);
                a23 = Vector512.FusedMultiplyAdd(v3, u2, a23);
            }
            if (rows > 3)
            {
                var u3 = Vector512.Load(u + 48);
                a30 = Vector512.FusedMultiplyAdd(v0, u3, a30);
                a31 = Vector512.FusedMultiplyAdd(v1, u3, a31);
                a32 = Vector512.FusedMultiplyAdd(v2, u3, a32);
                a33 = Vector512.FusedMultiplyAdd(v3, u3, a33);
            }
            if (rows > 4)
            {
                var u4 = Vector512.Load(u + 64);
                a40 = Vector512.FusedMultiplyAdd(v0, u4, a40);
                a41 = Vector512.FusedMultiplyAdd(v1, u4, a41);
                a42 = Vector512.FusedMultiplyAdd(v2, u4, a42);
                a43 = Vector512.FusedMultiplyAdd(v3, u4, a43);
            }
            if (rows > 5)
            {
                var u5 = Vector512.Load(u + 80);
                a50 = Vector512.FusedMultiplyAdd(v0, u5, a50);
                a51 = Vector512.FusedMultiplyAdd(v1, u5, a51);
                a52 = Vector512.FusedMultiplyAdd(v2, u5, a52);
                a53 = Vector512.FusedMultiplyAdd(v3, u5, a53);
            }
        }
        if (i == k && VectorEnds)
        {
            // No columns past the last full vector: each row's four sums are its four outputs (plus their biases, added
            // as RowSum adds one), stored as one vector — no round trip through memory and no scalar end per output.
            float* yo = y + o, bo = bias == null ? null : bias + o;
            StoreFour(Sums(a00, a01, a02, a03), yo, bo);
            if (rows > 1) StoreFour(Sums(a10, a11, a12, a13), yo + n, bo);
            if (rows > 2) StoreFour(Sums(a20, a21, a22, a23), yo + 2L * n, bo);
            if (rows > 3) StoreFour(Sums(a30, a31, a32, a33), yo + 3L * n, bo);
            if (rows > 4) StoreFour(Sums(a40, a41, a42, a43), yo + 4L * n, bo);
            if (rows > 5) StoreFour(Sums(a50, a51, a52, a53), yo + 5L * n, bo);
            return;
        }
        Sums(a00, a01, a02, a03).Store(sums + 0);
        if (rows > 1) Sums(a10, a11, a12, a13).Store(sums + 4);
        if (rows > 2) Sums(a20, a21, a22, a23).Store(sums + 8);
        if (rows > 3) Sums(a30, a31, a32, a33).Store(sums + 12);
        if (rows > 4) Sums(a40, a41, a42, a43).Store(sums + 16);
        if (rows > 5) Sums(a50, a51, a52, a53).Store(sums + 20);
        for (int r = 0; r < rows; r++) Finish(sums + 4 * r, w0, x + (long)r * k, y + (long)r * n, bias, k, o, i);
    }

    private static void PortableBlock(int rows, float* w, float* x, float* y, float* bias, int k, int n, int o, bool prefetch)
    {
        switch (rows)
        {
            case 1: PortableBlock4<One>(w, x, y, bias, k, n, o, prefetch); break;
            case 2: PortableBlock4<Two>(w, x, y, bias, k, n, o, prefetch); break;
            default: throw new ArgumentOutOfRangeException(nameof(rows), rows, $"a portable register block takes 1..{PortableRowBlock} input rows");
        }
    }

    /// <summary>The number of input rows of a register block as a type, so that the JIT compiles one body per count
    /// with the unused accumulators removed (a struct type argument gets its own code; <c>TRows.Value</c> is a constant there);
    /// also the block's prefetches an iteration (<c>TPrefetches</c>, 1 or 4), the unused ones removed the same way.</summary>
    private interface IRowCount { static abstract int Value { get; } }
    private struct One : IRowCount { public static int Value => 1; }
    private struct Two : IRowCount { public static int Value => 2; }
    private struct Three : IRowCount { public static int Value => 3; }
    private struct Four : IRowCount { public static int Value => 4; }
    private struct Five : IRowCount { public static int Value => 5; }
    private struct Six : IRowCount { public static int Value => 6; }

    /// <summary>As <see cref="Block4{TRows}"/> with <see cref="Vector{T}"/>: 4 × 2 accumulators, the 4 weight vectors and an input
    /// vector fit the 16 registers of AVX2.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PortableBlock4<TRows>(float* w, float* x, float* y, float* bias, int k, int n, int o, bool prefetch) where TRows : struct, IRowCount
    {
        int rows = TRows.Value, width = Vector<float>.Count;
        float* sums = stackalloc float[4 * PortableRowBlock];
        int ahead = prefetch ? PrefetchAhead : 0;
        float* w0 = w + (long)o * k, w1 = w0 + k, w2 = w1 + k, w3 = w2 + k;
        float* x0 = x + 0L * k, x1 = x + 1L * k;
        Vector<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector<float> a10 = default, a11 = default, a12 = default, a13 = default;
        int i = 0;
        for (; i + width <= k; i += width)
        {
            if (Sse.IsSupported)
            {
                Sse.Prefetch0(w0 + i + ahead);
                Sse.Prefetch0(w1 + i + ahead);
                Sse.Prefetch0(w2 + i + ahead);
                Sse.Prefetch0(w3 + i + ahead);
            }
            var v0 = Vector.Load(w0 + i);
            var v1 = Vector.Load(w1 + i);
            var v2 = Vector.Load(w2 + i);
            var v3 = Vector.Load(w3 + i);
            var u0 = Vector.Load(x0 + i);
            a00 = Vector.FusedMultiplyAdd(v0, u0, a00);
            a01 = Vector.FusedMultiplyAdd(v1, u0, a01);
            a02 = Vector.FusedMultiplyAdd(v2, u0, a02);
            a03 = Vector.FusedMultiplyAdd(v3, u0, a03);
            if (rows > 1)
            {
                var u1 = Vector.Load(x1 + i);
                a10 = Vector.FusedMultiplyAdd(v0, u1, a10);
                a11 = Vector.FusedMultiplyAdd(v1, u1, a11);
                a12 = Vector.FusedMultiplyAdd(v2, u1, a12);
                a13 = Vector.FusedMultiplyAdd(v3, u1, a13);
            }
        }
        sums[0] = Vector.Sum(a00);
        sums[1] = Vector.Sum(a01);
        sums[2] = Vector.Sum(a02);
        sums[3] = Vector.Sum(a03);
        if (rows > 1)
        {
            sums[4] = Vector.Sum(a10);
            sums[5] = Vector.Sum(a11);
            sums[6] = Vector.Sum(a12);
            sums[7] = Vector.Sum(a13);
        }
        // Every accumulator is reduced before the first call: a vector live across a call would be spilled inside the loop.
        for (int r = 0; r < rows; r++) Finish(sums + 4 * r, w0, x + (long)r * k, y + (long)r * n, bias, k, o, i);
    }

    /// <summary>The horizontal sums of four accumulators as one vector [Σa, Σb, Σc, Σd]: halves added, then two rounds of
    /// pairwise adds over all four at once (a dozen instructions where four <c>Vector512.Sum</c> take about a hundred).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<float> Sums(Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> d)
    {
        Vector256<float> p = a.GetLower() + a.GetUpper(), q = b.GetLower() + b.GetUpper(), r = c.GetLower() + c.GetUpper(), s = d.GetLower() + d.GetUpper();
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(p, q), Avx.HorizontalAdd(r, s)); // [Σp0..3, Σq0..3, Σr0..3, Σs0..3 | the same of 4..7]
        return h.GetLower() + h.GetUpper();
    }

    /// <summary>Four finished sums of one input row stored at <paramref name="y"/>, each plus its bias where there is one
    /// (as <see cref="RowSum"/> adds it; none added where there is none, so −0 stays −0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreFour(Vector128<float> sums, float* y, float* bias) =>
        (bias == null ? sums : sums + Vector128.Load(bias)).Store(y);

    /// <summary>Ends four dot products of one input row (<see cref="Fp32Kernels.FinishFour"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish(float* sums, float* w0, float* x, float* y, float* bias, int k, int o, int i) =>
        Fp32Kernels.FinishFour(sums[0], sums[1], sums[2], sums[3], w0, x, y, bias, k, o, i);
}
