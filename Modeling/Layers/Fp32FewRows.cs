using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// The few-row path of <see cref="Fp32Kernels"/> (AVX-512): inputs of 2..<see cref="FewRows"/> rows — a speculative
/// verification pass (k + 1 = 5 positions), a merged step of a few streams — read each weight row once, front to back,
/// as the one-row kernel does, and multiply it into every input row at once. Per (input row, weight row) the
/// arithmetic is the one-row kernel's, step for step: four accumulators over 64-float chunks, then 16-float chunks into
/// the first, their sum ((a0 + a1) + (a2 + a3)), the scalar tail, the bias. So a verification pass's products equal
/// single-row decode's bit for bit. The register-blocked kernel (Fp32MultiRow.cs: four weight rows in lock-step) takes
/// more rows, where the arithmetic, not the reads, sets the pace.
/// </summary>
public static unsafe partial class Fp32Kernels
{
    /// <summary>Inputs of 2..FewRows rows take the few-row path (one register group: 6 rows × 4 accumulators + 4 weight vectors).</summary>
    public const int FewRows = RowBlock;

    /// <summary>Output columns [from, to) of all <paramref name="m"/> (2..<see cref="FewRows"/>) input rows, one weight row at a time.</summary>
    private static void FewRowsPass(float* w, float* x, float* y, float* bias, int k, int n, int m, int from, int to)
    {
        for (int o = from; o < to; o++)
        {
            float* wr = w + (long)o * k;
            switch (m)
            {
                case 2: WeightRow<Two>(wr, x, y + o, bias == null ? null : bias + o, k, n); break;
                case 3: WeightRow<Three>(wr, x, y + o, bias == null ? null : bias + o, k, n); break;
                case 4: WeightRow<Four>(wr, x, y + o, bias == null ? null : bias + o, k, n); break;
                case 5: WeightRow<Five>(wr, x, y + o, bias == null ? null : bias + o, k, n); break;
                case 6: WeightRow<Six>(wr, x, y + o, bias == null ? null : bias + o, k, n); break;
                default: throw new ArgumentOutOfRangeException(nameof(m), m, $"the few-row path takes 2..{FewRows} input rows");
            }
        }
    }

    /// <summary>One weight row (<paramref name="wr"/>, <paramref name="k"/> floats) against <typeparamref name="TRows"/> input
    /// rows: y[r·n] = Σᵢ wr[i]·x[r·k + i] (+ bias[0]) in the one-row kernel's order of operations.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightRow<TRows>(float* wr, float* x, float* y, float* bias, int k, int n) where TRows : struct, IRowCount
    {
        int rows = TRows.Value;
        float* x0 = x, x1 = x + 1L * k, x2 = x + 2L * k, x3 = x + 3L * k, x4 = x + 4L * k, x5 = x + 5L * k;
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
        Vector512<float> a40 = default, a41 = default, a42 = default, a43 = default;
        Vector512<float> a50 = default, a51 = default, a52 = default, a53 = default;
        int i = 0;
        for (; i + 64 <= k; i += 64)
        {
            Sse.Prefetch0(wr + i + PrefetchAhead); // past a row's end this reaches the next rows: still ahead of use
            Sse.Prefetch0(wr + i + PrefetchAhead + 16);
            Sse.Prefetch0(wr + i + PrefetchAhead + 32);
            Sse.Prefetch0(wr + i + PrefetchAhead + 48);
            var v0 = Vector512.Load(wr + i);
            var v1 = Vector512.Load(wr + i + 16);
            var v2 = Vector512.Load(wr + i + 32);
            var v3 = Vector512.Load(wr + i + 48);
            a00 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x0 + i), a00);
            a01 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x0 + i + 16), a01);
            a02 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x0 + i + 32), a02);
            a03 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x0 + i + 48), a03);
            a10 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x1 + i), a10);
            a11 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x1 + i + 16), a11);
            a12 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x1 + i + 32), a12);
            a13 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x1 + i + 48), a13);
            if (rows > 2)
            {
                a20 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x2 + i), a20);
                a21 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x2 + i + 16), a21);
                a22 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x2 + i + 32), a22);
                a23 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x2 + i + 48), a23);
            }
            if (rows > 3)
            {
                a30 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x3 + i), a30);
                a31 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x3 + i + 16), a31);
                a32 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x3 + i + 32), a32);
                a33 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x3 + i + 48), a33);
            }
            if (rows > 4)
            {
                a40 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x4 + i), a40);
                a41 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x4 + i + 16), a41);
                a42 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x4 + i + 32), a42);
                a43 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x4 + i + 48), a43);
            }
            if (rows > 5)
            {
                a50 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x5 + i), a50);
                a51 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x5 + i + 16), a51);
                a52 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x5 + i + 32), a52);
                a53 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x5 + i + 48), a53);
            }
        }
        int t = i; // 16-float chunks past the last 64: into each row's first accumulator, as the one-row kernel does
        for (; t + 16 <= k; t += 16)
        {
            var v = Vector512.Load(wr + t);
            a00 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x0 + t), a00);
            a10 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x1 + t), a10);
            if (rows > 2) a20 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x2 + t), a20);
            if (rows > 3) a30 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x3 + t), a30);
            if (rows > 4) a40 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x4 + t), a40);
            if (rows > 5) a50 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x5 + t), a50);
        }
        float* sums = stackalloc float[RowBlock];
        sums[0] = Vector512.Sum((a00 + a01) + (a02 + a03));
        sums[1] = Vector512.Sum((a10 + a11) + (a12 + a13));
        if (rows > 2) sums[2] = Vector512.Sum((a20 + a21) + (a22 + a23));
        if (rows > 3) sums[3] = Vector512.Sum((a30 + a31) + (a32 + a33));
        if (rows > 4) sums[4] = Vector512.Sum((a40 + a41) + (a42 + a43));
        if (rows > 5) sums[5] = Vector512.Sum((a50 + a51) + (a52 + a53));
        for (int r = 0; r < rows; r++)
        {
            float s = sums[r];
            float* xr = x + (long)r * k;
            for (int j = t; j < k; j++) s += wr[j] * xr[j];
            y[(long)r * n] = bias != null ? s + bias[0] : s;
        }
    }
}
