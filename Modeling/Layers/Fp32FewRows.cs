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

    /// <summary>Output columns [from, to) of all <paramref name="m"/> (2..<see cref="FewRows"/>) input rows, one weight row at a time.</summary>
    private static void FewRowsPass(float* w, float* x, float* y, float* bias, int k, int n, int m, int from, int to)
    {
        for (int o = from; o < to; o++)
        {
            float* wr = w + (long)o * k, b = bias == null ? null : bias + o;
            switch (m)
            {
                case 2: WeightRow<Two>(wr, x, y + o, b, k, n); break;
                case 3: WeightRow<Three>(wr, x, y + o, b, k, n); break;
                case 4: WeightRow<Four>(wr, x, y + o, b, k, n); break;
                case 5: WeightRow<Five>(wr, x, y + o, b, k, n); break;
                case 6: WeightRow<Six>(wr, x, y + o, b, k, n); break;
                default: throw new ArgumentOutOfRangeException(nameof(m), m, $"the few-row path takes 2..{FewRows} input rows");
            }
        }
    }

    /// <summary>One weight row (<paramref name="wr"/>, <paramref name="k"/> floats) against <typeparamref name="TRows"/> input
    /// rows: y[r·n] = Σᵢ wr[i]·x[r·k + i] (+ bias[0]), each in <see cref="RowSum"/>'s order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightRow<TRows>(float* wr, float* x, float* y, float* bias, int k, int n) where TRows : struct, IRowCount
    {
        int rows = TRows.Value;
        float* x0 = x, x1 = x + 1L * k, x2 = x + 2L * k, x3 = x + 3L * k, x4 = x + 4L * k, x5 = x + 5L * k;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default;
        int i = 0;
        for (; i + 64 <= k; i += 64)
        {
            Sse.Prefetch0(wr + i + PrefetchAhead); // past a row's end this reaches the next rows: still ahead of use
            Sse.Prefetch0(wr + i + PrefetchAhead + 16);
            Sse.Prefetch0(wr + i + PrefetchAhead + 32);
            Sse.Prefetch0(wr + i + PrefetchAhead + 48);
            // Four 16-float chunks, each into every row's accumulator in order (written out: the JIT does not unroll loops).
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
        for (; i + 16 <= k; i += 16)
        {
            var v = Vector512.Load(wr + i);
            a0 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x0 + i), a0);
            a1 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x1 + i), a1);
            if (rows > 2) a2 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x2 + i), a2);
            if (rows > 3) a3 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x3 + i), a3);
            if (rows > 4) a4 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x4 + i), a4);
            if (rows > 5) a5 = Vector512.FusedMultiplyAdd(v, Vector512.Load(x5 + i), a5);
        }
        // Every accumulator is reduced before the first call: a vector live across a call would be spilled inside the loop.
        float* sums = stackalloc float[8];
        Sums(a0, a1, a2, a3).Store(sums);
        Sums(a4, a5, a4, a5).Store(sums + 4);
        for (int r = 0; r < rows; r++) y[(long)r * n] = RowSum(sums[r], wr, x + (long)r * k, bias, k, i);
    }
}
