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
/// weights the caller stores −mid·zx and it is a plain load. Per chunk (a 128-code block, or a whole group where groups
/// are larger) the accumulator is then scaled lane-wise and added: Σ_g scale_g·Σ_{j∈g} (code_j − zero_g)·x_j, float32
/// throughout (activations are not quantized).
/// int4 runs on <see cref="QuantKernels"/>' wide layout (64 bytes = 128 codes, shift + 16-entry permute per 16 codes);
/// int8 on the natural layout, 32 codes (two vectors) at a time, zero-extend + convert.
/// </summary>
internal static unsafe class QuantDecodeRows
{
    /// <summary>Bytes ahead of the four rows being read that are prefetched: the same place in the next four rows'
    /// stretch is <c>4 · rowBytes</c> ahead; a fixed distance a few cache lines past the current four rows' reads keeps the
    /// stream requested early without reaching past what the next pass reads.</summary>
    private const int PrefetchAhead = 1536;

    /// <summary>Whether the int8 kernel applies: 32-code steps fit every group, whole groups the row.</summary>
    public static bool Int8Applies(int inF, int groupSize) => inF % 32 == 0 && groupSize % 32 == 0 && inF % groupSize == 0;

    /// <summary>Lane-wise input sums per chunk into <paramref name="zx"/> (16 floats a chunk), multiplied by
    /// <paramref name="factor"/> (−mid for symmetric weights, 1 with zero points). int4 wide: chunk = block of 128 codes
    /// (or gs/128 blocks for larger groups), lane i = Σ_s x[b·128 + 16s + i]; int8: chunk = group, lane i = Σ_v x[g·gs + 16v + i].</summary>
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

    /// <summary>The codes a chunk spans for int4 wide (block, or whole group when larger).</summary>
    public static int Int4ChunkCodes(int groupSize) => groupSize >= 128 ? groupSize : 128;

    /// <summary>Output rows [from, to) of an int4 wide-layout weight against one gathered input row.</summary>
    public static void Int4Rows<TDecode>(byte* codes, float* scales, float* zeros, float* x, float* zx, int inF, int gs, int from, int to, float* y)
        where TDecode : struct, IInt4Decode
    {
        int rowBytes = inF / 2, groups = (inF + gs - 1) / gs;
        for (int o = from; o < to; o += 4)
        {
            int last = Math.Min(o + 3, to - 1);
            int o1 = Math.Min(o + 1, last), o2 = Math.Min(o + 2, last), o3 = last;
            var r = Int4Four<TDecode>(codes + (long)o * rowBytes, codes + (long)o1 * rowBytes, codes + (long)o2 * rowBytes, codes + (long)o3 * rowBytes,
                scales + (long)o * groups, scales + (long)o1 * groups, scales + (long)o2 * groups, scales + (long)o3 * groups,
                zeros is null ? null : zeros + (long)o * groups, zeros is null ? null : zeros + (long)o1 * groups,
                zeros is null ? null : zeros + (long)o2 * groups, zeros is null ? null : zeros + (long)o3 * groups,
                x, zx, inF, gs);
            if (last == o + 3) r.Store(y + o);
            else for (int t = 0; t <= last - o; t++) y[o + t] = r.GetElement(t);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector128<float> Int4Four<TDecode>(byte* c0, byte* c1, byte* c2, byte* c3, float* s0, float* s1, float* s2, float* s3,
        float* z0, float* z1, float* z2, float* z3, float* x, float* zx, int inF, int gs)
        where TDecode : struct, IInt4Decode
    {
        int blocks = inF / 128, perChunk = gs >= 128 ? gs / 128 : 1;
        var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        for (int b0 = 0, ci = 0; b0 < blocks; b0 += perChunk, ci++)
        {
            var init = Vector512.Load(zx + ci * 16);
            Vector512<float> p0, p1, p2, p3;
            if (z0 is null) { p0 = init; p1 = init; p2 = init; p3 = init; }
            else
            {
                p0 = -(Lanes(z0, b0, ci, gs) * init); p1 = -(Lanes(z1, b0, ci, gs) * init);
                p2 = -(Lanes(z2, b0, ci, gs) * init); p3 = -(Lanes(z3, b0, ci, gs) * init);
            }
            int bEnd = Math.Min(blocks, b0 + perChunk);
            for (int b = b0; b < bEnd; b++)
            {
                float* xb = x + b * 128L;
                var x0 = Vector512.Load(xb); var x1 = Vector512.Load(xb + 16); var x2 = Vector512.Load(xb + 32); var x3 = Vector512.Load(xb + 48);
                var x4 = Vector512.Load(xb + 64); var x5 = Vector512.Load(xb + 80); var x6 = Vector512.Load(xb + 96); var x7 = Vector512.Load(xb + 112);
                long off = b * 64L;
                Sse.Prefetch0(c0 + off + PrefetchAhead);
                p0 += TDecode.Block(Vector512.Load((uint*)(c0 + off)), x0, x1, x2, x3, x4, x5, x6, x7);
                Sse.Prefetch0(c1 + off + PrefetchAhead);
                p1 += TDecode.Block(Vector512.Load((uint*)(c1 + off)), x0, x1, x2, x3, x4, x5, x6, x7);
                Sse.Prefetch0(c2 + off + PrefetchAhead);
                p2 += TDecode.Block(Vector512.Load((uint*)(c2 + off)), x0, x1, x2, x3, x4, x5, x6, x7);
                Sse.Prefetch0(c3 + off + PrefetchAhead);
                p3 += TDecode.Block(Vector512.Load((uint*)(c3 + off)), x0, x1, x2, x3, x4, x5, x6, x7);
            }
            a0 = Vector512.FusedMultiplyAdd(Lanes(s0, b0, ci, gs), p0, a0);
            a1 = Vector512.FusedMultiplyAdd(Lanes(s1, b0, ci, gs), p1, a1);
            a2 = Vector512.FusedMultiplyAdd(Lanes(s2, b0, ci, gs), p2, a2);
            a3 = Vector512.FusedMultiplyAdd(Lanes(s3, b0, ci, gs), p3, a3);
        }
        return Sum4(a0, a1, a2, a3);
    }

    /// <summary>How a 64-byte load of wide-layout int4 (16 words, 8 codes each; run s of the gathered input meets nibble s
    /// of every word) becomes Σ_s code_s · x_s.</summary>
    internal interface IInt4Decode
    {
        static abstract Vector512<float> Block(Vector512<uint> v, Vector512<float> x0, Vector512<float> x1, Vector512<float> x2,
            Vector512<float> x3, Vector512<float> x4, Vector512<float> x5, Vector512<float> x6, Vector512<float> x7);
    }

    /// <summary>Shift, then a 16-entry permute (it reads only each index's low 4 bits) of the table {0 … 15}: 7 shifts and
    /// 8 permutes per 128 codes, all on the shuffle-capable pipes.</summary>
    internal readonly struct ByPermute : IInt4Decode
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Block(Vector512<uint> v, Vector512<float> x0, Vector512<float> x1, Vector512<float> x2,
            Vector512<float> x3, Vector512<float> x4, Vector512<float> x5, Vector512<float> x6, Vector512<float> x7)
        {
            var t = Vector512.Create(0f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            var e = Vector512.FusedMultiplyAdd(Code(t, v), x0, Code(t, v >>> 4) * x1);
            var f = Vector512.FusedMultiplyAdd(Code(t, v >>> 8), x2, Code(t, v >>> 12) * x3);
            e = Vector512.FusedMultiplyAdd(Code(t, v >>> 16), x4, e);
            f = Vector512.FusedMultiplyAdd(Code(t, v >>> 20), x5, f);
            e = Vector512.FusedMultiplyAdd(Code(t, v >>> 24), x6, e);
            f = Vector512.FusedMultiplyAdd(Code(t, v >>> 28), x7, f);
            return e + f;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<float> Code(Vector512<float> table, Vector512<uint> shifted) => Avx512F.PermuteVar16x32(table, shifted.AsInt32());
    }

    /// <summary>
    /// No permute and one shift per 128 codes: a nibble masked in place and OR-ed into the float 2²³ (one ternary-logic op)
    /// is the float 2²³ + code·16^s for a nibble at bits 4s … 4s + 3 (s ≤ 4, below the exponent); subtracting 2²³ leaves
    /// code·16^s exactly, and the caller has scaled run s of the input by 16^−s (exact: a power of two), so the product is
    /// code·x as before. Nibbles 5–7 take the same path after one shift by 20 (as s = 0–2). Per 16 codes: a logic op on
    /// any vector pipe, a subtraction on the adders, an FMA on the multipliers — spread over the pipes the permute
    /// decoding queues on two of.
    /// </summary>
    internal readonly struct ByMagic : IInt4Decode
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Block(Vector512<uint> v, Vector512<float> x0, Vector512<float> x1, Vector512<float> x2,
            Vector512<float> x3, Vector512<float> x4, Vector512<float> x5, Vector512<float> x6, Vector512<float> x7)
        {
            var h = v >>> 20;
            var e = Vector512.FusedMultiplyAdd(Code(v, 0xFu), x0, Code(v, 0xF0u) * x1);
            var f = Vector512.FusedMultiplyAdd(Code(v, 0xF00u), x2, Code(v, 0xF000u) * x3);
            e = Vector512.FusedMultiplyAdd(Code(v, 0xF0000u), x4, e);
            f = Vector512.FusedMultiplyAdd(Code(h, 0xFu), x5, f);
            e = Vector512.FusedMultiplyAdd(Code(h, 0xF0u), x6, e);
            f = Vector512.FusedMultiplyAdd(Code(h, 0xF00u), x7, f);
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

    /// <summary>Per-lane values (scales or zeros) of chunk ci, starting at block b0, wide layout: lane i covers columns
    /// 8i … 8i + 7, so groups of 32 give 4 values per block, groups of 64 give 2, larger groups one.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Lanes(float* v, int b0, int ci, int gs) => gs switch
    {
        32 => Avx512F.PermuteVar16x32(Vector128.Load(v + b0 * 4).ToVector256Unsafe().ToVector512Unsafe(), Quads),
        64 => Avx512F.PermuteVar16x32(Sse2.LoadScalarVector128((double*)(v + b0 * 2)).AsSingle().ToVector256Unsafe().ToVector512Unsafe(), Octets),
        _ => Vector512.Create(v[ci]), // groups of 128 or more: chunk ci is group ci
    };

    /// <summary>Output rows [from, to) of an int8 weight (natural layout) against one gathered input row.</summary>
    public static void Int8Rows(byte* codes, float* scales, float* zeros, float* x, float* zx, int inF, int gs, int from, int to, float* y)
    {
        int groups = inF / gs;
        for (int o = from; o < to; o += 4)
        {
            int last = Math.Min(o + 3, to - 1);
            int o1 = Math.Min(o + 1, last), o2 = Math.Min(o + 2, last), o3 = last;
            var r = Int8Four(codes + (long)o * inF, codes + (long)o1 * inF, codes + (long)o2 * inF, codes + (long)o3 * inF,
                scales + (long)o * groups, scales + (long)o1 * groups, scales + (long)o2 * groups, scales + (long)o3 * groups,
                zeros is null ? null : zeros + (long)o * groups, zeros is null ? null : zeros + (long)o1 * groups,
                zeros is null ? null : zeros + (long)o2 * groups, zeros is null ? null : zeros + (long)o3 * groups,
                x, zx, inF, gs);
            if (last == o + 3) r.Store(y + o);
            else for (int t = 0; t <= last - o; t++) y[o + t] = r.GetElement(t);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector128<float> Int8Four(byte* c0, byte* c1, byte* c2, byte* c3, float* s0, float* s1, float* s2, float* s3,
        float* z0, float* z1, float* z2, float* z3, float* x, float* zx, int inF, int gs)
    {
        int groups = inF / gs;
        var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        for (int g = 0; g < groups; g++)
        {
            var init = Vector512.Load(zx + g * 16);
            Vector512<float> p0, p1, p2, p3;
            if (z0 is null) { p0 = init; p1 = init; p2 = init; p3 = init; }
            else
            {
                p0 = -(Vector512.Create(z0[g]) * init); p1 = -(Vector512.Create(z1[g]) * init);
                p2 = -(Vector512.Create(z2[g]) * init); p3 = -(Vector512.Create(z3[g]) * init);
            }
            var q0 = Vector512<float>.Zero; var q1 = q0; var q2 = q0; var q3 = q0;
            int end = (g + 1) * gs;
            for (int j = g * gs; j < end; j += 32)
            {
                var xa = Vector512.Load(x + j); var xb = Vector512.Load(x + j + 16);
                if ((j & 63) == 0)
                {
                    Sse.Prefetch0(c0 + j + PrefetchAhead); Sse.Prefetch0(c1 + j + PrefetchAhead);
                    Sse.Prefetch0(c2 + j + PrefetchAhead); Sse.Prefetch0(c3 + j + PrefetchAhead);
                }
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

    private static readonly Vector512<int> Quads = Vector512.Create(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    private static readonly Vector512<int> Octets = Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
}
