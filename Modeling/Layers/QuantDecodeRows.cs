using ShardPipe.Modeling.Core;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// The one-row (decode) int4/int8 matrix-vector kernels of <see cref="QuantKernels"/>, AVX-512: four output rows per pass,
/// so that each input vector loaded serves four weight rows, four rows' FMA chains overlap, and the four row sums come out
/// of one transposing reduction (a horizontal sum per row, and a scalar zero term per row, cost a 768-wide int4 row as
/// much as half its codes). The zero point is folded into each chunk's accumulator before its codes: Σ_j (code_j − z)·x_j
/// = Σ_j code_j·x_j − z·Σ_j x_j, and with lane-wise input sums <c>zx</c> computed once per call (lane i of a chunk's vector
/// is the sum of the inputs that lane i of the accumulator meets) the accumulator starts at −z·zx — for symmetric
/// weights the caller stores −mid·zx and it is a plain load, with zero points z·(−zx). Per chunk (int4: a 128-code block,
/// whatever the group size; int8: a group) the accumulator is then scaled lane-wise and added: Σ_g scale_g·Σ_{j∈g}
/// (code_j − zero_g)·x_j, float32 throughout (activations are not quantized).
/// int4 runs on <see cref="QuantKernels"/>' wide layout (64 bytes = 128 codes, shift + 16-entry permute per 16 codes);
/// int8 on the natural layout, 32 codes (two vectors) at a time, zero-extend + convert. Each kernel is one flat loop
/// specialised (generic struct parameters) per decoding, group-size kind and zero kind, so the JIT keeps accumulators and
/// constants in registers (BENCHMARKS.md, session 12: the instructions per 128 codes before and after).
/// </summary>
internal static unsafe class QuantDecodeRows
{
    /// <summary>How far ahead of each row's read the kernels prefetch: the same place in a later pass of four rows (the
    /// four rows of a pass are one contiguous stretch of <c>4 · rowBytes</c>, so a fixed distance shorter than that lands in
    /// the rows the pass is reading already), whole passes of at least <see cref="MinPrefetchBytes"/>. Session 12: a
    /// fixed 1,536 bytes fell inside the current pass for every row wider than 384 bytes (int8 at 768 inputs, int4 at
    /// 2,048), and the kernels waited on memory.</summary>
    internal static long PrefetchAhead(int rowBytes)
    {
        long pass = 4L * rowBytes;
        return pass * Math.Max(1, (MinPrefetchBytes + pass - 1) / pass);
    }

    /// <summary>
    /// Off: an int4 part of rows (<see cref="Int4Rows{TDecode}"/>) starts on its loads alone (benchmarks compare both in one
    /// process; default on). On: the stretch the in-loop prefetch does not cover — the part's first
    /// <see cref="PrefetchAhead"/> bytes, read before the loop's prefetches run ahead of it — is requested in one burst
    /// before the loop, so those misses overlap instead of arriving a pass at a time. A decode step runs ≈ 49 quantized
    /// products of 8 parts each; alternating int4 generations of the 134M Llama in one process (medians of 12–14):
    /// 412 → 421, 380 → 386, 385 → 391, 386 → 388 tok/s. int8 (rows twice as long, half as many a part) measured none:
    /// 251 → 248, 266 → 258.
    /// </summary>
    public static bool PartStartPrefetch { get; set; } = true;

    /// <summary>Prefetches [<paramref name="start"/>, + <paramref name="bytes"/>), a cache line at a time.</summary>
    private static void PrefetchStart(byte* start, long bytes)
    {
        for (long a = 0; a < bytes; a += 64) Sse.Prefetch0(start + a);
    }

    /// <summary>The least prefetch distance (4 KB, as the one-row kernels use): enough requests in flight to cover memory latency.</summary>
    private const int MinPrefetchBytes = 4096;

    /// <summary>Whether the int8 kernel applies: 32-code steps fit every group, whole groups the row.</summary>
    public static bool Int8Applies(int inF, int groupSize) => inF % 32 == 0 && groupSize % 32 == 0 && inF % groupSize == 0;

    /// <summary>Lane-wise input sums per chunk into <paramref name="zx"/> (16 floats a chunk), multiplied by
    /// <paramref name="factor"/> (<see cref="LaneFactor"/>). int4 wide: chunk = block of 128 codes, lane i = Σ_s x[b·128 + 16s + i];
    /// int8: chunk = group, lane i = Σ_v x[g·gs + 16v + i].</summary>
    public static void LaneSums(float* x, int inF, int chunkCodes, float factor, float* zx)
    {
        for (int c = 0; c * chunkCodes < inF; c++)
        {
            var acc = Vector512<float>.Zero;
            int end = Math.Min(inF, (c + 1) * chunkCodes);
            for (int j = c * chunkCodes; j < end; j += 16) acc += Vector512.Load(x + j);
            (acc * factor).Store(zx + c * 16);
        }
    }

    /// <summary>The codes a chunk of <see cref="LaneSums"/> spans for int4 wide: one 128-code block, whatever the group
    /// size (the kernel folds the zero term and applies the scale once per block).</summary>
    public static int Int4ChunkCodes(int groupSize) => 128;

    /// <summary>The factor <see cref="LaneSums"/> multiplies lane sums by (int4 and int8): −mid for symmetric weights; with
    /// zero points −1, so that a chunk's start is z·(−Σx), one multiplication.</summary>
    public static float LaneFactor(bool zeroPoints, float mid) => zeroPoints ? -1f : -mid;

    /// <summary>Output rows [from, to) of an int4 wide-layout weight against one gathered input row (lane sums of
    /// <see cref="Int4ChunkCodes"/>, factor <see cref="LaneFactor"/>).</summary>
    public static void Int4Rows<TDecode>(byte* codes, float* scales, float* zeros, float* x, float* zx, int inF, int gs, int from, int to, float* y)
        where TDecode : struct, IInt4Decode
    {
        if (gs == 32) Int4Rows<TDecode, Quarters>(codes, scales, zeros, x, zx, inF, gs, from, to, y);
        else if (gs == 64) Int4Rows<TDecode, Halves>(codes, scales, zeros, x, zx, inF, gs, from, to, y);
        else Int4Rows<TDecode, Whole>(codes, scales, zeros, x, zx, inF, gs, from, to, y);
    }

    private static void Int4Rows<TDecode, TLanes>(byte* codes, float* scales, float* zeros, float* x, float* zx, int inF, int gs, int from, int to, float* y)
        where TDecode : struct, IInt4Decode where TLanes : struct, ILanes
    {
        if (zeros is null) Int4Rows<TDecode, TLanes, Symmetric>(codes, scales, zeros, x, zx, inF, gs, from, to, y);
        else Int4Rows<TDecode, TLanes, ZeroPoints>(codes, scales, zeros, x, zx, inF, gs, from, to, y);
    }

    private static void Int4Rows<TDecode, TLanes, TZeros>(byte* codes, float* scales, float* zeros, float* x, float* zx, int inF, int gs, int from, int to, float* y)
        where TDecode : struct, IInt4Decode where TLanes : struct, ILanes where TZeros : struct, IZeros
    {
        int rowBytes = inF / 2, groups = (inF + gs - 1) / gs, blocks = inF / 128, perGroup = gs >= 128 ? gs / 128 : 1;
        long ahead = PrefetchAhead(rowBytes);
        if (PartStartPrefetch) PrefetchStart(codes + (long)from * rowBytes, Math.Min(ahead, (long)(to - from) * rowBytes));
        for (int o = from; o < to; o += 4)
        {
            int last = Math.Min(o + 3, to - 1);
            int o1 = Math.Min(o + 1, last), o2 = Math.Min(o + 2, last), o3 = last;
            var r = Int4Four<TDecode, TLanes, TZeros>(codes + (long)o * rowBytes, codes + (long)o1 * rowBytes, codes + (long)o2 * rowBytes, codes + (long)o3 * rowBytes,
                scales + (long)o * groups, scales + (long)o1 * groups, scales + (long)o2 * groups, scales + (long)o3 * groups,
                TZeros.Has ? zeros + (long)o * groups : null, TZeros.Has ? zeros + (long)o1 * groups : null,
                TZeros.Has ? zeros + (long)o2 * groups : null, TZeros.Has ? zeros + (long)o3 * groups : null,
                x, zx, blocks, perGroup, ahead);
            if (last == o + 3) r.Store(y + o);
            else for (int t = 0; t <= last - o; t++) y[o + t] = r.GetElement(t);
        }
    }

    /// <summary>
    /// Four rows, one 128-code block a step: per row the block's codes decoded and multiplied into two FMA chains, the first
    /// started at the block's zero term, then scaled into the row's accumulator (one FMA). One flat loop, specialised per
    /// group-size kind (<typeparamref name="TLanes"/>) and zero kind (<typeparamref name="TZeros"/>): no branch, no spill and
    /// no constant reloaded inside it. (Session 12: the chunk loop it replaced kept its accumulators on the stack and re-ran
    /// the group-size switch, with the class-init checks of its permute tables, for every row of every chunk — for groups
    /// of 128 about as many instructions again as the codes' own work.)
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector128<float> Int4Four<TDecode, TLanes, TZeros>(byte* c0, byte* c1, byte* c2, byte* c3, float* s0, float* s1, float* s2, float* s3,
        float* z0, float* z1, float* z2, float* z3, float* x, float* zx, int blocks, int perGroup, long ahead)
        where TDecode : struct, IInt4Decode where TLanes : struct, ILanes where TZeros : struct, IZeros
    {
        var spread = TLanes.Spread;
        var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        for (int b = 0, g = 0, left = perGroup; b < blocks; b++)
        {
            // g: the group of block b where groups span blocks (counted, not divided: the JIT kept one idiv per row)
            if (left == 0) { g++; left = perGroup; }
            left--;
            var zi = Vector512.Load(zx + b * 16);
            Vector512<float> i0 = zi, i1 = zi, i2 = zi, i3 = zi;
            if (TZeros.Has)
            {
                i0 = TLanes.Load(z0, b, g, spread) * zi; i1 = TLanes.Load(z1, b, g, spread) * zi;
                i2 = TLanes.Load(z2, b, g, spread) * zi; i3 = TLanes.Load(z3, b, g, spread) * zi;
            }
            float* xb = x + b * 128L;
            long off = b * 64L;
            Sse.Prefetch0(c0 + off + ahead);
            a0 = Vector512.FusedMultiplyAdd(TLanes.Load(s0, b, g, spread), TDecode.Block(Vector512.Load((uint*)(c0 + off)), i0, xb), a0);
            Sse.Prefetch0(c1 + off + ahead);
            a1 = Vector512.FusedMultiplyAdd(TLanes.Load(s1, b, g, spread), TDecode.Block(Vector512.Load((uint*)(c1 + off)), i1, xb), a1);
            Sse.Prefetch0(c2 + off + ahead);
            a2 = Vector512.FusedMultiplyAdd(TLanes.Load(s2, b, g, spread), TDecode.Block(Vector512.Load((uint*)(c2 + off)), i2, xb), a2);
            Sse.Prefetch0(c3 + off + ahead);
            a3 = Vector512.FusedMultiplyAdd(TLanes.Load(s3, b, g, spread), TDecode.Block(Vector512.Load((uint*)(c3 + off)), i3, xb), a3);
        }
        return Sum4(a0, a1, a2, a3);
    }

    /// <summary>
    /// Output rows [from, to) of an int4 wide-layout weight against <paramref name="m"/> gathered input rows (a verification
    /// pass, a few streams' decode step): input i's gathered row at <c>x + i·xStride</c>, its lane sums at
    /// <c>zx + i·zStride</c>, its outputs at <c>y + i·yStride</c>. Two weight rows against two or three inputs a pass
    /// (<see cref="RowsMany{TPair}"/>, <see cref="Int4Pair{TLanes, TZeros, TInputs}"/>): each code vector decoded once serves
    /// every input of the pass and each input vector loaded serves both rows, where running the one-row kernel per input
    /// decoded and read every code m times. The passes over
    /// a pair of rows follow each other, so its codes stay in L1. Every output equals the one-row kernel's
    /// (<see cref="Int4Rows{TDecode}"/> with <see cref="ByPermute"/>) bit for bit: per product the same two FMA chains per
    /// block, the same scaling FMA and the same transposing reduction — so a verification pass's products are single-row
    /// decode's, as in float32.
    /// </summary>
    public static void Int4RowsMany(byte* codes, float* scales, float* zeros, float* x, int xStride, float* zx, int zStride, int m,
        int inF, int gs, int from, int to, float* y, int yStride)
    {
        if (gs == 32) Int4RowsMany<Quarters>(codes, scales, zeros, x, xStride, zx, zStride, m, inF, gs, from, to, y, yStride);
        else if (gs == 64) Int4RowsMany<Halves>(codes, scales, zeros, x, xStride, zx, zStride, m, inF, gs, from, to, y, yStride);
        else Int4RowsMany<Whole>(codes, scales, zeros, x, xStride, zx, zStride, m, inF, gs, from, to, y, yStride);
    }

    private static void Int4RowsMany<TLanes>(byte* codes, float* scales, float* zeros, float* x, int xStride, float* zx, int zStride, int m,
        int inF, int gs, int from, int to, float* y, int yStride) where TLanes : struct, ILanes
    {
        if (zeros is null) Int4RowsMany<TLanes, Symmetric>(codes, scales, zeros, x, xStride, zx, zStride, m, inF, gs, from, to, y, yStride);
        else Int4RowsMany<TLanes, ZeroPoints>(codes, scales, zeros, x, xStride, zx, zStride, m, inF, gs, from, to, y, yStride);
    }

    private static void Int4RowsMany<TLanes, TZeros>(byte* codes, float* scales, float* zeros, float* x, int xStride, float* zx, int zStride, int m,
        int inF, int gs, int from, int to, float* y, int yStride) where TLanes : struct, ILanes where TZeros : struct, IZeros
    {
        int rowBytes = inF / 2, groups = (inF + gs - 1) / gs, blocks = inF / 128, perGroup = gs >= 128 ? gs / 128 : 1;
        long ahead = PrefetchAhead(rowBytes);
        if (PartStartPrefetch) PrefetchStart(codes + (long)from * rowBytes, Math.Min(ahead, (long)(to - from) * rowBytes));
        RowsMany<Int4Pairs<TLanes, TZeros>>(codes, rowBytes, scales, zeros, groups, x, xStride, zx, zStride, m, blocks, perGroup, from, to, y, yStride, ahead);
    }

    /// <summary>
    /// Output rows [from, to) of an int8 weight (natural layout) against <paramref name="m"/> gathered input rows, as
    /// <see cref="Int4RowsMany"/>: two weight rows against two or three inputs a pass (<see cref="Int8Pair{TZeros, TGroups, TInputs}"/>),
    /// each 16 codes widened once for every input, and every output bit for bit <see cref="Int8Rows"/>'s.
    /// </summary>
    public static void Int8RowsMany(byte* codes, float* scales, float* zeros, float* x, int xStride, float* zx, int zStride, int m,
        int inF, int gs, int from, int to, float* y, int yStride)
    {
        if (zeros is null)
        {
            if (gs == 32) Int8RowsMany<Symmetric, Groups32>(codes, scales, zeros, x, xStride, zx, zStride, m, inF, gs, from, to, y, yStride);
            else Int8RowsMany<Symmetric, GroupsWide>(codes, scales, zeros, x, xStride, zx, zStride, m, inF, gs, from, to, y, yStride);
        }
        else if (gs == 32) Int8RowsMany<ZeroPoints, Groups32>(codes, scales, zeros, x, xStride, zx, zStride, m, inF, gs, from, to, y, yStride);
        else Int8RowsMany<ZeroPoints, GroupsWide>(codes, scales, zeros, x, xStride, zx, zStride, m, inF, gs, from, to, y, yStride);
    }

    private static void Int8RowsMany<TZeros, TGroups>(byte* codes, float* scales, float* zeros, float* x, int xStride, float* zx, int zStride, int m,
        int inF, int gs, int from, int to, float* y, int yStride) where TZeros : struct, IZeros where TGroups : struct, IGroups
    {
        int groups = inF / gs;
        RowsMany<Int8Pairs<TZeros, TGroups>>(codes, inF, scales, zeros, groups, x, xStride, zx, zStride, m, groups, gs, from, to, y, yStride, PrefetchAhead(inF));
    }

    /// <summary>
    /// The few-row passes over output rows [from, to): two weight rows at a time (the last alone repeated), and against
    /// them the inputs in passes of three and two (5 = 3 + 2, 4 = 2 + 2, 7 = 3 + 2 + 2: none left half empty), one after
    /// another so the two rows' codes stay in L1; only the first pass prefetches ahead. <paramref name="a"/>,
    /// <paramref name="b"/>: the kernel's loop bounds (<typeparamref name="TPair"/>).
    /// </summary>
    private static void RowsMany<TPair>(byte* codes, int rowBytes, float* scales, float* zeros, int groups, float* x, int xStride, float* zx, int zStride,
        int m, int a, int b, int from, int to, float* y, int yStride, long ahead) where TPair : struct, IPair
    {
        for (int o = from; o < to; o += 2)
        {
            int o1 = Math.Min(o + 1, to - 1);
            byte* r0 = codes + (long)o * rowBytes, r1 = codes + (long)o1 * rowBytes;
            float* sc0 = scales + (long)o * groups, sc1 = scales + (long)o1 * groups;
            float* ze0 = zeros is null ? null : zeros + (long)o * groups, ze1 = zeros is null ? null : zeros + (long)o1 * groups;
            for (int i = 0; i < m;)
            {
                int take = m - i == 1 ? 1 : m - i == 4 || m - i == 2 ? 2 : 3;
                int i1 = Math.Min(i + 1, m - 1), i2 = Math.Min(i + 2, m - 1);
                long pf = i == 0 ? ahead : -1;
                if (take == 3)
                {
                    var (r, third) = TPair.Run<ThreeInputs>(r0, r1, sc0, sc1, ze0, ze1, x + (long)i * xStride, x + (long)i1 * xStride,
                        x + (long)i2 * xStride, zx + (long)i * zStride, zx + (long)i1 * zStride, zx + (long)i2 * zStride, a, b, pf);
                    Store(y, yStride, r, i, i1, o, o1);
                    y[(long)i2 * yStride + o] = third.GetElement(0);
                    if (o1 != o) y[(long)i2 * yStride + o1] = third.GetElement(1);
                }
                else
                {
                    var (r, _) = TPair.Run<TwoInputs>(r0, r1, sc0, sc1, ze0, ze1, x + (long)i * xStride, x + (long)i1 * xStride,
                        null, zx + (long)i * zStride, zx + (long)i1 * zStride, null, a, b, pf);
                    Store(y, yStride, r, i, take == 2 ? i1 : i, o, o1);
                }
                i += take;
            }
        }
    }

    /// <summary>Two weight rows against two or three inputs (<see cref="RowsMany{TPair}"/>): the sums of (c0, x0), (c0, x1),
    /// (c1, x0), (c1, x1), and of (c0, x2), (c1, x2) in the second vector's first lanes.</summary>
    private interface IPair
    {
        static abstract (Vector128<float>, Vector128<float>) Run<TInputs>(byte* c0, byte* c1, float* s0, float* s1, float* z0, float* z1,
            float* x0, float* x1, float* x2, float* zx0, float* zx1, float* zx2, int a, int b, long ahead) where TInputs : struct, IInputs;
    }

    private readonly struct Int4Pairs<TLanes, TZeros> : IPair where TLanes : struct, ILanes where TZeros : struct, IZeros
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector128<float>, Vector128<float>) Run<TInputs>(byte* c0, byte* c1, float* s0, float* s1, float* z0, float* z1,
            float* x0, float* x1, float* x2, float* zx0, float* zx1, float* zx2, int a, int b, long ahead) where TInputs : struct, IInputs =>
            Int4Pair<TLanes, TZeros, TInputs>(c0, c1, s0, s1, z0, z1, x0, x1, x2, zx0, zx1, zx2, a, b, ahead);
    }

    private readonly struct Int8Pairs<TZeros, TGroups> : IPair where TZeros : struct, IZeros where TGroups : struct, IGroups
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector128<float>, Vector128<float>) Run<TInputs>(byte* c0, byte* c1, float* s0, float* s1, float* z0, float* z1,
            float* x0, float* x1, float* x2, float* zx0, float* zx1, float* zx2, int a, int b, long ahead) where TInputs : struct, IInputs =>
            Int8Pair<TZeros, TGroups, TInputs>(c0, c1, s0, s1, z0, z1, x0, x1, x2, zx0, zx1, zx2, a, b, ahead);
    }

    /// <summary>Whether int8 groups are 32 codes (<see cref="Int8Four32{TZeros}"/>'s one step a group) or more
    /// (<see cref="Int8Four{TZeros}"/>'s two chains a group).</summary>
    private interface IGroups { static abstract bool Of32 { get; } }
    private readonly struct Groups32 : IGroups { public static bool Of32 => true; }
    private readonly struct GroupsWide : IGroups { public static bool Of32 => false; }

    /// <summary>Two int8 weight rows against two or three inputs, every product's sum in <see cref="Int8Four{TZeros}"/>'s
    /// order (groups of 32: <see cref="Int8Four32{TZeros}"/>'s): per 16 codes each row widened once and multiplied into
    /// every input's chain. <paramref name="ahead"/> &lt; 0: no prefetch.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static (Vector128<float>, Vector128<float>) Int8Pair<TZeros, TGroups, TInputs>(byte* c0, byte* c1, float* s0, float* s1, float* z0, float* z1,
        float* x0, float* x1, float* x2, float* zx0, float* zx1, float* zx2, int groups, int gs, long ahead)
        where TZeros : struct, IZeros where TGroups : struct, IGroups where TInputs : struct, IInputs
    {
        var a00 = Vector512<float>.Zero; var a01 = a00; var a10 = a00; var a11 = a00; var a02 = a00; var a12 = a00;
        for (int g = 0; g < groups; g++)
        {
            Vector512<float> i0 = Vector512.Load(zx0 + g * 16), i1 = Vector512.Load(zx1 + g * 16), i2 = TInputs.Three ? Vector512.Load(zx2 + g * 16) : default;
            Vector512<float> p00 = i0, p01 = i1, p10 = i0, p11 = i1, p02 = i2, p12 = i2;
            if (TZeros.Has)
            {
                var zr0 = Vector512.Create(z0[g]); var zr1 = Vector512.Create(z1[g]);
                p00 = zr0 * i0; p01 = zr0 * i1; p10 = zr1 * i0; p11 = zr1 * i1;
                if (TInputs.Three) { p02 = zr0 * i2; p12 = zr1 * i2; }
            }
            int j = g * gs;
            if (ahead >= 0 && (j & 63) == 0) { Sse.Prefetch0(c0 + j + ahead); Sse.Prefetch0(c1 + j + ahead); }
            if (TGroups.Of32)
            {
                // p = fma(W(j + 16), x(j + 16), fma(W(j), x(j), p)), then the scaling FMA.
                var w0 = Widen(c0 + j); var w1 = Widen(c1 + j);
                var xa = Vector512.Load(x0 + j); var xb = Vector512.Load(x1 + j);
                p00 = Vector512.FusedMultiplyAdd(w0, xa, p00); p01 = Vector512.FusedMultiplyAdd(w0, xb, p01);
                p10 = Vector512.FusedMultiplyAdd(w1, xa, p10); p11 = Vector512.FusedMultiplyAdd(w1, xb, p11);
                if (TInputs.Three) { var xc = Vector512.Load(x2 + j); p02 = Vector512.FusedMultiplyAdd(w0, xc, p02); p12 = Vector512.FusedMultiplyAdd(w1, xc, p12); }
                w0 = Widen(c0 + j + 16); w1 = Widen(c1 + j + 16);
                xa = Vector512.Load(x0 + j + 16); xb = Vector512.Load(x1 + j + 16);
                p00 = Vector512.FusedMultiplyAdd(w0, xa, p00); p01 = Vector512.FusedMultiplyAdd(w0, xb, p01);
                p10 = Vector512.FusedMultiplyAdd(w1, xa, p10); p11 = Vector512.FusedMultiplyAdd(w1, xb, p11);
                if (TInputs.Three) { var xc = Vector512.Load(x2 + j + 16); p02 = Vector512.FusedMultiplyAdd(w0, xc, p02); p12 = Vector512.FusedMultiplyAdd(w1, xc, p12); }
                var sr0 = Vector512.Create(s0[g]); var sr1 = Vector512.Create(s1[g]);
                a00 = Vector512.FusedMultiplyAdd(sr0, p00, a00); a01 = Vector512.FusedMultiplyAdd(sr0, p01, a01);
                a10 = Vector512.FusedMultiplyAdd(sr1, p10, a10); a11 = Vector512.FusedMultiplyAdd(sr1, p11, a11);
                if (TInputs.Three) { a02 = Vector512.FusedMultiplyAdd(sr0, p02, a02); a12 = Vector512.FusedMultiplyAdd(sr1, p12, a12); }
                continue;
            }
            // Two chains a group: p from the zero term over the first 16 of each 32, q over the second 16.
            {
                var w0 = Widen(c0 + j); var w1 = Widen(c1 + j);
                var xa = Vector512.Load(x0 + j); var xb = Vector512.Load(x1 + j);
                p00 = Vector512.FusedMultiplyAdd(w0, xa, p00); p01 = Vector512.FusedMultiplyAdd(w0, xb, p01);
                p10 = Vector512.FusedMultiplyAdd(w1, xa, p10); p11 = Vector512.FusedMultiplyAdd(w1, xb, p11);
                if (TInputs.Three) { var xc = Vector512.Load(x2 + j); p02 = Vector512.FusedMultiplyAdd(w0, xc, p02); p12 = Vector512.FusedMultiplyAdd(w1, xc, p12); }
            }
            Vector512<float> q00, q01, q10, q11, q02 = default, q12 = default;
            {
                var w0 = Widen(c0 + j + 16); var w1 = Widen(c1 + j + 16);
                var xa = Vector512.Load(x0 + j + 16); var xb = Vector512.Load(x1 + j + 16);
                q00 = w0 * xa; q01 = w0 * xb; q10 = w1 * xa; q11 = w1 * xb;
                if (TInputs.Three) { var xc = Vector512.Load(x2 + j + 16); q02 = w0 * xc; q12 = w1 * xc; }
            }
            for (j += 32; j < (g + 1) * gs; j += 32)
            {
                if (ahead >= 0 && (j & 63) == 0) { Sse.Prefetch0(c0 + j + ahead); Sse.Prefetch0(c1 + j + ahead); }
                var w0 = Widen(c0 + j); var w1 = Widen(c1 + j);
                var xa = Vector512.Load(x0 + j); var xb = Vector512.Load(x1 + j);
                p00 = Vector512.FusedMultiplyAdd(w0, xa, p00); p01 = Vector512.FusedMultiplyAdd(w0, xb, p01);
                p10 = Vector512.FusedMultiplyAdd(w1, xa, p10); p11 = Vector512.FusedMultiplyAdd(w1, xb, p11);
                if (TInputs.Three) { var xc = Vector512.Load(x2 + j); p02 = Vector512.FusedMultiplyAdd(w0, xc, p02); p12 = Vector512.FusedMultiplyAdd(w1, xc, p12); }
                w0 = Widen(c0 + j + 16); w1 = Widen(c1 + j + 16);
                xa = Vector512.Load(x0 + j + 16); xb = Vector512.Load(x1 + j + 16);
                q00 = Vector512.FusedMultiplyAdd(w0, xa, q00); q01 = Vector512.FusedMultiplyAdd(w0, xb, q01);
                q10 = Vector512.FusedMultiplyAdd(w1, xa, q10); q11 = Vector512.FusedMultiplyAdd(w1, xb, q11);
                if (TInputs.Three) { var xc = Vector512.Load(x2 + j + 16); q02 = Vector512.FusedMultiplyAdd(w0, xc, q02); q12 = Vector512.FusedMultiplyAdd(w1, xc, q12); }
            }
            {
                var sr0 = Vector512.Create(s0[g]); var sr1 = Vector512.Create(s1[g]);
                a00 = Vector512.FusedMultiplyAdd(sr0, p00 + q00, a00); a01 = Vector512.FusedMultiplyAdd(sr0, p01 + q01, a01);
                a10 = Vector512.FusedMultiplyAdd(sr1, p10 + q10, a10); a11 = Vector512.FusedMultiplyAdd(sr1, p11 + q11, a11);
                if (TInputs.Three) { a02 = Vector512.FusedMultiplyAdd(sr0, p02 + q02, a02); a12 = Vector512.FusedMultiplyAdd(sr1, p12 + q12, a12); }
            }
        }
        return (Sum4(a00, a01, a10, a11), TInputs.Three ? Sum4(a02, a12, a02, a12) : default);
    }

    /// <summary>A pass's four products: lanes (row o, input i), (o, i1), (o1, i), (o1, i1); a repeated row or input is written once.</summary>
    private static void Store(float* y, int yStride, Vector128<float> r, int i, int i1, int o, int o1)
    {
        y[(long)i * yStride + o] = r.GetElement(0);
        if (i1 != i) y[(long)i1 * yStride + o] = r.GetElement(1);
        if (o1 == o) return;
        y[(long)i * yStride + o1] = r.GetElement(2);
        if (i1 != i) y[(long)i1 * yStride + o1] = r.GetElement(3);
    }

    /// <summary>Whether a pair kernel (<see cref="Int4Pair{TLanes, TZeros, TInputs}"/>, <see cref="Int8Pair{TZeros, TGroups, TInputs}"/>) takes a third input.</summary>
    private interface IInputs { static abstract bool Three { get; } }
    private readonly struct TwoInputs : IInputs { public static bool Three => false; }
    private readonly struct ThreeInputs : IInputs { public static bool Three => true; }

    /// <summary>Two weight rows (<paramref name="c0"/>, <paramref name="c1"/>) against two or three inputs: per block each
    /// row's codes decoded once (shift, permute) and multiplied into every input's two chains in
    /// <see cref="ByPermute.Block"/>'s order, each chain pair then scaled into the product's accumulator as
    /// <see cref="Int4Four{TDecode, TLanes, TZeros}"/> does. Returns the sums of (c0, x0), (c0, x1), (c1, x0), (c1, x1) and
    /// of (c0, x2), (c1, x2) in the second's first two lanes. <paramref name="ahead"/> &lt; 0: no prefetch (a later pass
    /// over rows already read).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static (Vector128<float>, Vector128<float>) Int4Pair<TLanes, TZeros, TInputs>(byte* c0, byte* c1, float* s0, float* s1, float* z0, float* z1,
        float* x0, float* x1, float* x2, float* zx0, float* zx1, float* zx2, int blocks, int perGroup, long ahead)
        where TLanes : struct, ILanes where TZeros : struct, IZeros where TInputs : struct, IInputs
    {
        var spread = TLanes.Spread;
        var table = Vector512.Create(0f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        var a00 = Vector512<float>.Zero; var a01 = a00; var a10 = a00; var a11 = a00; var a02 = a00; var a12 = a00;
        for (int b = 0, g = 0, left = perGroup; b < blocks; b++)
        {
            if (left == 0) { g++; left = perGroup; }
            left--;
            long off = b * 64L;
            float* p0 = x0 + b * 128L, p1 = x1 + b * 128L, p2 = TInputs.Three ? x2 + b * 128L : null;
            if (ahead >= 0) { Sse.Prefetch0(c0 + off + ahead); Sse.Prefetch0(c1 + off + ahead); }
            var v0 = Vector512.Load((uint*)(c0 + off));
            var v1 = Vector512.Load((uint*)(c1 + off));
            Vector512<float> i0 = Vector512.Load(zx0 + b * 16), i1 = Vector512.Load(zx1 + b * 16), i2 = TInputs.Three ? Vector512.Load(zx2 + b * 16) : default;
            Vector512<float> e00 = i0, e01 = i1, e10 = i0, e11 = i1, e02 = i2, e12 = i2;
            if (TZeros.Has)
            {
                var zr0 = TLanes.Load(z0, b, g, spread); var zr1 = TLanes.Load(z1, b, g, spread);
                e00 = zr0 * i0; e01 = zr0 * i1; e10 = zr1 * i0; e11 = zr1 * i1;
                if (TInputs.Three) { e02 = zr0 * i2; e12 = zr1 * i2; }
            }
            // Nibble 0 (no shift) into the e chains, nibble 1 starts the f chains.
            var k0 = Avx512F.PermuteVar16x32(table, v0.AsInt32()); var k1 = Avx512F.PermuteVar16x32(table, v1.AsInt32());
            var xa = Vector512.Load(p0); var xb = Vector512.Load(p1);
            e00 = Vector512.FusedMultiplyAdd(k0, xa, e00); e01 = Vector512.FusedMultiplyAdd(k0, xb, e01);
            e10 = Vector512.FusedMultiplyAdd(k1, xa, e10); e11 = Vector512.FusedMultiplyAdd(k1, xb, e11);
            if (TInputs.Three) { var xc = Vector512.Load(p2); e02 = Vector512.FusedMultiplyAdd(k0, xc, e02); e12 = Vector512.FusedMultiplyAdd(k1, xc, e12); }
            k0 = Avx512F.PermuteVar16x32(table, (v0 >>> 4).AsInt32()); k1 = Avx512F.PermuteVar16x32(table, (v1 >>> 4).AsInt32());
            xa = Vector512.Load(p0 + 16); xb = Vector512.Load(p1 + 16);
            var f00 = k0 * xa; var f01 = k0 * xb; var f10 = k1 * xa; var f11 = k1 * xb;
            Vector512<float> f02 = default, f12 = default;
            if (TInputs.Three) { var xc = Vector512.Load(p2 + 16); f02 = k0 * xc; f12 = k1 * xc; }
            Step<TInputs>(v0, v1, 8, p0 + 32, p1 + 32, p2 + 32, table, ref e00, ref e01, ref e10, ref e11, ref e02, ref e12);
            Step<TInputs>(v0, v1, 12, p0 + 48, p1 + 48, p2 + 48, table, ref f00, ref f01, ref f10, ref f11, ref f02, ref f12);
            Step<TInputs>(v0, v1, 16, p0 + 64, p1 + 64, p2 + 64, table, ref e00, ref e01, ref e10, ref e11, ref e02, ref e12);
            Step<TInputs>(v0, v1, 20, p0 + 80, p1 + 80, p2 + 80, table, ref f00, ref f01, ref f10, ref f11, ref f02, ref f12);
            Step<TInputs>(v0, v1, 24, p0 + 96, p1 + 96, p2 + 96, table, ref e00, ref e01, ref e10, ref e11, ref e02, ref e12);
            Step<TInputs>(v0, v1, 28, p0 + 112, p1 + 112, p2 + 112, table, ref f00, ref f01, ref f10, ref f11, ref f02, ref f12);
            var sr0 = TLanes.Load(s0, b, g, spread); var sr1 = TLanes.Load(s1, b, g, spread);
            a00 = Vector512.FusedMultiplyAdd(sr0, e00 + f00, a00); a01 = Vector512.FusedMultiplyAdd(sr0, e01 + f01, a01);
            a10 = Vector512.FusedMultiplyAdd(sr1, e10 + f10, a10); a11 = Vector512.FusedMultiplyAdd(sr1, e11 + f11, a11);
            if (TInputs.Three) { a02 = Vector512.FusedMultiplyAdd(sr0, e02 + f02, a02); a12 = Vector512.FusedMultiplyAdd(sr1, e12 + f12, a12); }
        }
        return (Sum4(a00, a01, a10, a11), TInputs.Three ? Sum4(a02, a12, a02, a12) : default);
    }

    /// <summary>One nibble position (<paramref name="shift"/>) of both rows into every input's chains.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step<TInputs>(Vector512<uint> v0, Vector512<uint> v1, int shift, float* p0, float* p1, float* p2, Vector512<float> table,
        ref Vector512<float> c00, ref Vector512<float> c01, ref Vector512<float> c10, ref Vector512<float> c11,
        ref Vector512<float> c02, ref Vector512<float> c12) where TInputs : struct, IInputs
    {
        var k0 = Avx512F.PermuteVar16x32(table, (v0 >>> shift).AsInt32());
        var k1 = Avx512F.PermuteVar16x32(table, (v1 >>> shift).AsInt32());
        var xa = Vector512.Load(p0); var xb = Vector512.Load(p1);
        c00 = Vector512.FusedMultiplyAdd(k0, xa, c00); c01 = Vector512.FusedMultiplyAdd(k0, xb, c01);
        c10 = Vector512.FusedMultiplyAdd(k1, xa, c10); c11 = Vector512.FusedMultiplyAdd(k1, xb, c11);
        if (TInputs.Three) { var xc = Vector512.Load(p2); c02 = Vector512.FusedMultiplyAdd(k0, xc, c02); c12 = Vector512.FusedMultiplyAdd(k1, xc, c12); }
    }

    /// <summary>How a 64-byte load of wide-layout int4 (16 words, 8 codes each; run s of the gathered input meets nibble s
    /// of every word) becomes <c>init</c> + Σ_s code_s · x_s (x: the block's 128 gathered inputs).</summary>
    internal interface IInt4Decode
    {
        static abstract Vector512<float> Block(Vector512<uint> v, Vector512<float> init, float* x);
    }

    /// <summary>Shift, then a 16-entry permute (it reads only each index's low 4 bits) of the table {0 … 15}: 7 shifts and
    /// 8 permutes per 128 codes (nibble 0 needs no shift); exact for every input (the inputs are not rescaled).</summary>
    internal readonly struct ByPermute : IInt4Decode
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Block(Vector512<uint> v, Vector512<float> init, float* x)
        {
            var e = Vector512.FusedMultiplyAdd(Code(v), Vector512.Load(x), init);
            var f = Code(v >>> 4) * Vector512.Load(x + 16);
            e = Vector512.FusedMultiplyAdd(Code(v >>> 8), Vector512.Load(x + 32), e);
            f = Vector512.FusedMultiplyAdd(Code(v >>> 12), Vector512.Load(x + 48), f);
            e = Vector512.FusedMultiplyAdd(Code(v >>> 16), Vector512.Load(x + 64), e);
            f = Vector512.FusedMultiplyAdd(Code(v >>> 20), Vector512.Load(x + 80), f);
            e = Vector512.FusedMultiplyAdd(Code(v >>> 24), Vector512.Load(x + 96), e);
            f = Vector512.FusedMultiplyAdd(Code(v >>> 28), Vector512.Load(x + 112), f);
            return e + f;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<float> Code(Vector512<uint> shifted) =>
            Avx512F.PermuteVar16x32(Vector512.Create(0f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), shifted.AsInt32());
    }

    /// <summary>
    /// No permute and one shift per 128 codes: a nibble masked in place and OR-ed into the float 2²³ (one ternary-logic op)
    /// is the float 2²³ + code·16^s for a nibble at bits 4s … 4s + 3 (s ≤ 4, below the exponent); subtracting 2²³ leaves
    /// code·16^s exactly, and the caller has scaled run s of the input by 16^−s (exact: a power of two), so the product is
    /// code·x as before. Nibbles 5–7 take the same path after one shift by 20 (as s = 0–2). Per 16 codes: a logic op on
    /// any vector pipe, a subtraction on the adders, an FMA on the multipliers — and, ternary logic overwriting one of its
    /// operands, a register copy of 2²³ that the JIT adds before each.
    /// </summary>
    internal readonly struct ByMagic : IInt4Decode
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Block(Vector512<uint> v, Vector512<float> init, float* x)
        {
            var h = v >>> 20;
            var e = Vector512.FusedMultiplyAdd(Code(v, 0xFu), Vector512.Load(x), init);
            var f = Code(v, 0xF0u) * Vector512.Load(x + 16);
            e = Vector512.FusedMultiplyAdd(Code(v, 0xF00u), Vector512.Load(x + 32), e);
            f = Vector512.FusedMultiplyAdd(Code(v, 0xF000u), Vector512.Load(x + 48), f);
            e = Vector512.FusedMultiplyAdd(Code(v, 0xF0000u), Vector512.Load(x + 64), e);
            f = Vector512.FusedMultiplyAdd(Code(h, 0xFu), Vector512.Load(x + 80), f);
            e = Vector512.FusedMultiplyAdd(Code(h, 0xF0u), Vector512.Load(x + 96), e);
            f = Vector512.FusedMultiplyAdd(Code(h, 0xF00u), Vector512.Load(x + 112), f);
            return e + f;
        }

        /// <summary>(v &amp; mask) | bits(2²³), as a float, minus 2²³.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<float> Code(Vector512<uint> v, uint mask) =>
            Avx512F.TernaryLogic(v, Vector512.Create(mask), Vector512.Create(0x4B000000u), 0xEA).AsSingle() - Vector512.Create(8388608f);

        /// <summary>Run s of each 128-input block (16 inputs) scaled by 16^−s, s counted from 0 again at run 5 (after the shift).</summary>
        public static void ScaleInputs(float* x, int inF)
        {
            for (int b = 0; b < inF; b += 128)
                for (int s = 1; s < 8; s++)
                {
                    if (s == 5) continue;
                    var f = Vector512.Create(s < 5 ? MathF.ScaleB(1f, -4 * s) : MathF.ScaleB(1f, -4 * (s - 5)));
                    (Vector512.Load(x + b + 16 * s) * f).Store(x + b + 16 * s);
                }
        }
    }

    /// <summary>A block's per-lane values (scales or zero points), wide layout: lane i covers columns 8i … 8i + 7, so groups
    /// of 32 give 4 values per block, groups of 64 give 2, larger groups one (group g of block b).</summary>
    private interface ILanes
    {
        /// <summary>The permute indices that spread a block's values over the lanes (held in a register across the loop).</summary>
        static abstract Vector512<int> Spread { get; }
        static abstract Vector512<float> Load(float* v, int b, int g, Vector512<int> spread);
    }

    private readonly struct Quarters : ILanes
    {
        public static Vector512<int> Spread => Vector512.Create(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(float* v, int b, int g, Vector512<int> spread) =>
            Avx512F.PermuteVar16x32(Vector128.Load(v + b * 4).ToVector256Unsafe().ToVector512Unsafe(), spread);
    }

    private readonly struct Halves : ILanes
    {
        public static Vector512<int> Spread => Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(float* v, int b, int g, Vector512<int> spread) =>
            Avx512F.PermuteVar16x32(Sse2.LoadScalarVector128((double*)(v + b * 2)).AsSingle().ToVector256Unsafe().ToVector512Unsafe(), spread);
    }

    private readonly struct Whole : ILanes
    {
        public static Vector512<int> Spread => Vector512<int>.Zero;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load(float* v, int b, int g, Vector512<int> spread) => Vector512.Create(v[g]);
    }

    /// <summary>Whether the weight has zero points (else the symmetric midpoint, folded into the lane sums by the caller).</summary>
    private interface IZeros { static abstract bool Has { get; } }
    private readonly struct Symmetric : IZeros { public static bool Has => false; }
    private readonly struct ZeroPoints : IZeros { public static bool Has => true; }

    /// <summary>Output rows [from, to) of an int8 weight (natural layout) against one gathered input row (lane sums per
    /// group, factor <see cref="LaneFactor"/>).</summary>
    public static void Int8Rows(byte* codes, float* scales, float* zeros, float* x, float* zx, int inF, int gs, int from, int to, float* y)
    {
        if (zeros is null) Int8Rows<Symmetric>(codes, scales, zeros, x, zx, inF, gs, from, to, y);
        else Int8Rows<ZeroPoints>(codes, scales, zeros, x, zx, inF, gs, from, to, y);
    }

    private static void Int8Rows<TZeros>(byte* codes, float* scales, float* zeros, float* x, float* zx, int inF, int gs, int from, int to, float* y)
        where TZeros : struct, IZeros
    {
        int groups = inF / gs;
        long ahead = PrefetchAhead(inF);
        for (int o = from; o < to; o += 4)
        {
            int last = Math.Min(o + 3, to - 1);
            int o1 = Math.Min(o + 1, last), o2 = Math.Min(o + 2, last), o3 = last;
            var r = gs == 32 ? Int8Four32<TZeros>(codes + (long)o * inF, codes + (long)o1 * inF, codes + (long)o2 * inF, codes + (long)o3 * inF,
                scales + (long)o * groups, scales + (long)o1 * groups, scales + (long)o2 * groups, scales + (long)o3 * groups,
                TZeros.Has ? zeros + (long)o * groups : null, TZeros.Has ? zeros + (long)o1 * groups : null,
                TZeros.Has ? zeros + (long)o2 * groups : null, TZeros.Has ? zeros + (long)o3 * groups : null,
                x, zx, groups, ahead)
                : Int8Four<TZeros>(codes + (long)o * inF, codes + (long)o1 * inF, codes + (long)o2 * inF, codes + (long)o3 * inF,
                scales + (long)o * groups, scales + (long)o1 * groups, scales + (long)o2 * groups, scales + (long)o3 * groups,
                TZeros.Has ? zeros + (long)o * groups : null, TZeros.Has ? zeros + (long)o1 * groups : null,
                TZeros.Has ? zeros + (long)o2 * groups : null, TZeros.Has ? zeros + (long)o3 * groups : null,
                x, zx, groups, gs, ahead);
            if (last == o + 3) r.Store(y + o);
            else for (int t = 0; t <= last - o; t++) y[o + t] = r.GetElement(t);
        }
    }

    /// <summary>Four rows, a group a step: per row two FMA chains over the group's 32-code steps, the first started at the
    /// group's zero term and the second at its first product (no zeroed accumulators), then one scaling FMA; specialised
    /// per zero kind, so the loop holds no branch but the prefetch's once-a-cache-line test.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector128<float> Int8Four<TZeros>(byte* c0, byte* c1, byte* c2, byte* c3, float* s0, float* s1, float* s2, float* s3,
        float* z0, float* z1, float* z2, float* z3, float* x, float* zx, int groups, int gs, long ahead)
        where TZeros : struct, IZeros
    {
        var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        for (int g = 0; g < groups; g++)
        {
            var zi = Vector512.Load(zx + g * 16);
            Vector512<float> p0 = zi, p1 = zi, p2 = zi, p3 = zi;
            if (TZeros.Has)
            {
                p0 = Vector512.Create(z0[g]) * zi; p1 = Vector512.Create(z1[g]) * zi;
                p2 = Vector512.Create(z2[g]) * zi; p3 = Vector512.Create(z3[g]) * zi;
            }
            int j = g * gs, end = j + gs;
            if ((j & 63) == 0)
            {
                Sse.Prefetch0(c0 + j + ahead); Sse.Prefetch0(c1 + j + ahead);
                Sse.Prefetch0(c2 + j + ahead); Sse.Prefetch0(c3 + j + ahead);
            }
            var xa = Vector512.Load(x + j); var xb = Vector512.Load(x + j + 16);
            p0 = Vector512.FusedMultiplyAdd(Widen(c0 + j), xa, p0); var q0 = Widen(c0 + j + 16) * xb;
            p1 = Vector512.FusedMultiplyAdd(Widen(c1 + j), xa, p1); var q1 = Widen(c1 + j + 16) * xb;
            p2 = Vector512.FusedMultiplyAdd(Widen(c2 + j), xa, p2); var q2 = Widen(c2 + j + 16) * xb;
            p3 = Vector512.FusedMultiplyAdd(Widen(c3 + j), xa, p3); var q3 = Widen(c3 + j + 16) * xb;
            for (j += 32; j < end; j += 32)
            {
                if ((j & 63) == 0)
                {
                    Sse.Prefetch0(c0 + j + ahead); Sse.Prefetch0(c1 + j + ahead);
                    Sse.Prefetch0(c2 + j + ahead); Sse.Prefetch0(c3 + j + ahead);
                }
                xa = Vector512.Load(x + j); xb = Vector512.Load(x + j + 16);
                p0 = Vector512.FusedMultiplyAdd(Widen(c0 + j), xa, p0); q0 = Vector512.FusedMultiplyAdd(Widen(c0 + j + 16), xb, q0);
                p1 = Vector512.FusedMultiplyAdd(Widen(c1 + j), xa, p1); q1 = Vector512.FusedMultiplyAdd(Widen(c1 + j + 16), xb, q1);
                p2 = Vector512.FusedMultiplyAdd(Widen(c2 + j), xa, p2); q2 = Vector512.FusedMultiplyAdd(Widen(c2 + j + 16), xb, q2);
                p3 = Vector512.FusedMultiplyAdd(Widen(c3 + j), xa, p3); q3 = Vector512.FusedMultiplyAdd(Widen(c3 + j + 16), xb, q3);
            }
            a0 = Vector512.FusedMultiplyAdd(Vector512.Create(s0[g]), p0 + q0, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Create(s1[g]), p1 + q1, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Create(s2[g]), p2 + q2, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Create(s3[g]), p3 + q3, a3);
        }
        return Sum4(a0, a1, a2, a3);
    }

    /// <summary>Groups of 32 (one 32-code step a group): per row one chain, zero term → two FMAs → the scaling FMA, so a
    /// group costs a row 3 FMAs, not 4 plus an add; the chains restart every group, so the rows and the next groups'
    /// chains overlap their latency. A prefetch per row every other group (one per 64-byte line).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector128<float> Int8Four32<TZeros>(byte* c0, byte* c1, byte* c2, byte* c3, float* s0, float* s1, float* s2, float* s3,
        float* z0, float* z1, float* z2, float* z3, float* x, float* zx, int groups, long ahead)
        where TZeros : struct, IZeros
    {
        var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        for (int g = 0; g < groups; g++)
        {
            var zi = Vector512.Load(zx + g * 16);
            Vector512<float> p0 = zi, p1 = zi, p2 = zi, p3 = zi;
            if (TZeros.Has)
            {
                p0 = Vector512.Create(z0[g]) * zi; p1 = Vector512.Create(z1[g]) * zi;
                p2 = Vector512.Create(z2[g]) * zi; p3 = Vector512.Create(z3[g]) * zi;
            }
            int j = g * 32;
            if ((g & 1) == 0)
            {
                Sse.Prefetch0(c0 + j + ahead); Sse.Prefetch0(c1 + j + ahead);
                Sse.Prefetch0(c2 + j + ahead); Sse.Prefetch0(c3 + j + ahead);
            }
            var xa = Vector512.Load(x + j); var xb = Vector512.Load(x + j + 16);
            p0 = Vector512.FusedMultiplyAdd(Widen(c0 + j + 16), xb, Vector512.FusedMultiplyAdd(Widen(c0 + j), xa, p0));
            p1 = Vector512.FusedMultiplyAdd(Widen(c1 + j + 16), xb, Vector512.FusedMultiplyAdd(Widen(c1 + j), xa, p1));
            p2 = Vector512.FusedMultiplyAdd(Widen(c2 + j + 16), xb, Vector512.FusedMultiplyAdd(Widen(c2 + j), xa, p2));
            p3 = Vector512.FusedMultiplyAdd(Widen(c3 + j + 16), xb, Vector512.FusedMultiplyAdd(Widen(c3 + j), xa, p3));
            a0 = Vector512.FusedMultiplyAdd(Vector512.Create(s0[g]), p0, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Create(s1[g]), p1, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Create(s2[g]), p2, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Create(s3[g]), p3, a3);
        }
        return Sum4(a0, a1, a2, a3);
    }

    /// <summary>16 unsigned 8-bit codes as floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Widen(byte* p) => Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p)));

    /// <summary>The four vectors' sums as one vector: halves added, then three horizontal adds transpose and reduce together.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Sum4(Vector512<float> a0, Vector512<float> a1, Vector512<float> a2, Vector512<float> a3)
    {
        var b0 = a0.GetLower() + a0.GetUpper(); var b1 = a1.GetLower() + a1.GetUpper();
        var b2 = a2.GetLower() + a2.GetUpper(); var b3 = a3.GetLower() + a3.GetUpper();
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(b0, b1), Avx.HorizontalAdd(b2, b3));
        return h.GetLower() + h.GetUpper();
    }

}
