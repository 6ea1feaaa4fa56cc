using ShardPipe.Modeling.Core;
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// The arithmetic of <see cref="DecodeAttention"/>: one task per (segment row, head) over all the row's positions — one
/// for a decode row, the last token and its k drafts (≤ <see cref="DecodeAttention.MaxPositions"/>) for a speculative
/// verification segment — so a segment's positions read their head's keys and values in one task, from cache after the
/// first, where one task per position read the head's whole cache again for each (a 5-position segment over a
/// 200-position past cost ≈ 4× one position's attention: BENCHMARKS.md, "Session 12 — verification pass"). Decode rows
/// and segments share this one path, so a position's output is the same bits as a decode row of its own or inside a
/// verification pass (<c>SegmentAttentionKernelTests</c> checks it bit for bit), and a verification's logits stay the
/// plain steps'. Float32 heads of a multiple of 16 channels on AVX-512 take fused multiply-add dots and a weighted sum
/// held in registers; other dtypes and CPUs the <see cref="Dot"/>/<see cref="DotBf16"/>/<see cref="Axpy"/> forms.
/// </summary>
public static unsafe partial class DecodeAttention
{
    /// <summary>
    /// Softmax's numerators in place — scores[p] = exp(scores[p] − max), p &lt; n — and their sum: eight lanes at a time
    /// (<see cref="Vector256.Exp(Vector256{float})"/>, which computes in double lanes and rounds once, within an ulp of
    /// MathF.Exp), the lanes summed at the end, the last n mod 8 one by one. The one-position task and the multi-position
    /// one both call it, so a position's weights are the same bits either way. Scalar MathF.Exp, one call per key, was about
    /// a fifth of a multi-position segment's attention (BENCHMARKS.md, "Session 12 — verification pass").
    /// </summary>
    internal static float Exponentials(float* scores, int n, float max)
    {
        int p = 0;
        float sum = 0;
        if (Vector256.IsHardwareAccelerated && n >= Vector256<float>.Count)
        {
            var m = Vector256.Create(max);
            var lanes = Vector256<float>.Zero;
            for (; p <= n - Vector256<float>.Count; p += Vector256<float>.Count)
            {
                var e = Vector256.Exp(Vector256.Load(scores + p) - m);
                e.Store(scores + p);
                lanes += e;
            }
            sum = Vector256.Sum(lanes);
        }
        for (; p < n; p++) sum += scores[p] = MathF.Exp(scores[p] - max);
        return sum;
    }

    /// <summary>The rows of every segment (each row's positions form one group).</summary>
    private static int RowGroups(IReadOnlyList<RaggedBatch.Segment> segments)
    {
        int rows = 0;
        foreach (var s in segments) rows += checked((int)s.Rows);
        return rows;
    }

    /// <summary>
    /// Where each segment row's positions start in the step's row jobs (which list every segment's rows in order, each
    /// row's positions in order), and the total at the end: groups[g]..groups[g + 1] are row g's positions.
    /// </summary>
    private static int[] GroupStarts(IReadOnlyList<RaggedBatch.Segment> segments)
    {
        var starts = new int[RowGroups(segments) + 1];
        int g = 0, at = 0;
        foreach (var s in segments)
            for (long b = 0; b < s.Rows; b++)
            {
                starts[g++] = at;
                at += checked((int)s.Tokens);
            }
        starts[g] = at;
        return starts;
    }

    /// <summary>
    /// Tasks [from, to) of a step: task t is group t ÷ heads (one segment row, its 1 to <see cref="MaxPositions"/>
    /// positions, which share the row's cache block) and head t mod heads. Per position: its scores over the keys it sees
    /// (with its mask and causal bound), <see cref="Exponentials"/>, the weights normalised, and the weighted sum of the
    /// values. Float32 heads of a multiple of 16 channels on AVX-512 take <see cref="Dot16"/> and <see cref="WeightedSum16"/>
    /// (fused multiply-adds, the output accumulated in registers); the rest the <see cref="Dot"/>/<see cref="Axpy"/> forms.
    /// </summary>
    private static void GroupTasks(RowJob[] jobs, int[] groups, byte* q, byte* output, ScalarType dtype, int es, Shape shape, int maxLength, int from, int to)
    {
        int hd = shape.HeadDim, heads = shape.Heads, perKv = shape.Heads / shape.KvHeads;
        var scratch = ArrayPool<float>.Shared.Rent(maxLength + 3 * hd);
        try
        {
            fixed (float* sp = scratch)
            {
                float* scores = sp, qf = sp + maxLength, acc = qf + hd, row = acc + hd;
                float scale = (float)shape.Scale, causalMin = (float)AttentionMask.MinValue(dtype);
                bool direct = dtype == ScalarType.BFloat16 && hd % (2 * System.Numerics.Vector<float>.Count) == 0; // bf16 keys and values read in place (DotBf16, AxpyBf16)
                bool fast = dtype == ScalarType.Float32 && Avx512F.IsSupported && hd % 16 == 0;
                for (int t = from; t < to; t++)
                {
                    int g = t / heads, h = t % heads, first = groups[g], count = groups[g + 1] - first, kvHead = h / perKv;
                    ref readonly var lead = ref jobs[first];
                    byte* keys = lead.K + kvHead * lead.Capacity * hd * es, values = lead.V + kvHead * lead.Capacity * hd * es;
                    for (int i = 0; i < count; i++)
                    {
                        ref readonly var job = ref jobs[first + i];
                        int n = job.Length;
                        Widen(q + (job.FlatRow * heads + h) * hd * es, dtype, qf, hd);
                        for (int c = 0; c < hd; c++) qf[c] *= scale;
                        float max = float.NegativeInfinity;
                        if (fast)
                            for (int p = 0; p < n; p += 4) // four keys a pass: each key's dot is the same bits whichever four it is among
                            {
                                float* k0 = (float*)(keys + (long)p * hd * es);
                                var four = Dot16Four(qf, k0, p + 1 < n ? k0 + hd : k0, p + 2 < n ? k0 + 2 * hd : k0, p + 3 < n ? k0 + 3 * hd : k0, hd);
                                for (int j = 0; j < 4 && p + j < n; j++)
                                {
                                    float s = four.GetElement(j);
                                    if (job.Mask is not null) s += Read(job.Mask, job.MaskType, p + j);
                                    if (p + j > job.Causal) s += causalMin;
                                    scores[p + j] = s;
                                    if (s > max) max = s;
                                }
                            }
                        else
                            for (int p = 0; p < n; p++)
                            {
                                byte* key = keys + (long)p * hd * es;
                                float s = direct ? DotBf16(qf, (ushort*)key, hd) : Dot(qf, dtype == ScalarType.Float32 ? (float*)key : Widen(key, dtype, row, hd), hd);
                                if (job.Mask is not null) s += Read(job.Mask, job.MaskType, p);
                                if (p > job.Causal) s += causalMin;
                                scores[p] = s;
                                if (s > max) max = s;
                            }
                        float sum = Exponentials(scores, n, max);
                        if (fast)
                        {
                            Normalise(scores, n, sum);
                            WeightedSum16(scores, (float*)values, n, hd, (float*)(output + (job.FlatRow * heads + h) * hd * es));
                            continue;
                        }
                        new Span<float>(acc, hd).Clear();
                        for (int p = 0; p < n; p++)
                        {
                            byte* value = values + (long)p * hd * es;
                            if (direct) AxpyBf16(scores[p] / sum, (ushort*)value, acc, hd);
                            else Axpy(scores[p] / sum, dtype == ScalarType.Float32 ? (float*)value : Widen(value, dtype, row, hd), acc, hd);
                        }
                        Narrow(acc, output + (job.FlatRow * heads + h) * hd * es, dtype, hd);
                    }
                }
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(scratch);
        }
    }

    /// <summary>
    /// q·k for four keys over n float32 channels (a multiple of 16): per key a product of the first 16 channels, fused
    /// multiply-adds of the rest into its one 16-lane accumulator, and the four accumulators' lanes summed together
    /// (<see cref="Fp32Kernels.Sums"/>: a dozen instructions where one <c>Vector512.Sum</c> per key took about 25). A key's
    /// dot is the same bits in any of the four places, so a position's scores do not depend on how its keys fall into fours.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Dot16Four(float* q, float* k0, float* k1, float* k2, float* k3, int n)
    {
        var x = Vector512.Load(q);
        var a0 = Avx512F.Multiply(x, Vector512.Load(k0));
        var a1 = Avx512F.Multiply(x, Vector512.Load(k1));
        var a2 = Avx512F.Multiply(x, Vector512.Load(k2));
        var a3 = Avx512F.Multiply(x, Vector512.Load(k3));
        for (int i = 16; i < n; i += 16)
        {
            x = Vector512.Load(q + i);
            a0 = Avx512F.FusedMultiplyAdd(x, Vector512.Load(k0 + i), a0);
            a1 = Avx512F.FusedMultiplyAdd(x, Vector512.Load(k1 + i), a1);
            a2 = Avx512F.FusedMultiplyAdd(x, Vector512.Load(k2 + i), a2);
            a3 = Avx512F.FusedMultiplyAdd(x, Vector512.Load(k3 + i), a3);
        }
        return Fp32Kernels.Sums(a0, a1, a2, a3);
    }

    /// <summary>weights[p] /= sum for p &lt; n.</summary>
    private static void Normalise(float* weights, int n, float sum)
    {
        int p = 0;
        var s = Vector512.Create(sum);
        for (; p <= n - 16; p += 16) (Vector512.Load(weights + p) / s).Store(weights + p);
        for (; p < n; p++) weights[p] /= sum;
    }

    /// <summary>
    /// output[c] = Σ_p weights[p]·values[p, c] over n rows of hd float32 (a multiple of 16): 64 channels at a time, the
    /// even keys and the odd keys each into their own four 16-lane accumulators held in registers (two chains of fused
    /// multiply-adds per channel block instead of one: a chain's four-cycle latency per key had set the pace), added at the
    /// end. Which accumulator a key goes to depends on its index alone, and a masked key's weight is an exact zero, so a
    /// position's output is the same bits over its own keys or over a segment's longer, masked range.
    /// </summary>
    private static void WeightedSum16(float* weights, float* values, int n, int hd, float* output)
    {
        int c = 0;
        for (; c + 64 <= hd; c += 64)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            float* v = values + c;
            int p = 0;
            for (; p + 2 <= n; p += 2, v += 2 * hd)
            {
                var w = Vector512.Create(weights[p]);
                var u = Vector512.Create(weights[p + 1]);
                a0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(v), a0);
                a1 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(v + 16), a1);
                a2 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(v + 32), a2);
                a3 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(v + 48), a3);
                b0 = Avx512F.FusedMultiplyAdd(u, Vector512.Load(v + hd), b0);
                b1 = Avx512F.FusedMultiplyAdd(u, Vector512.Load(v + hd + 16), b1);
                b2 = Avx512F.FusedMultiplyAdd(u, Vector512.Load(v + hd + 32), b2);
                b3 = Avx512F.FusedMultiplyAdd(u, Vector512.Load(v + hd + 48), b3);
            }
            if (p < n)
            {
                var w = Vector512.Create(weights[p]);
                a0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(v), a0);
                a1 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(v + 16), a1);
                a2 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(v + 32), a2);
                a3 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(v + 48), a3);
            }
            (a0 + b0).Store(output + c);
            (a1 + b1).Store(output + c + 16);
            (a2 + b2).Store(output + c + 32);
            (a3 + b3).Store(output + c + 48);
        }
        for (; c < hd; c += 16)
        {
            Vector512<float> a = default, b = default;
            float* v = values + c;
            int p = 0;
            for (; p + 2 <= n; p += 2, v += 2 * hd)
            {
                a = Avx512F.FusedMultiplyAdd(Vector512.Create(weights[p]), Vector512.Load(v), a);
                b = Avx512F.FusedMultiplyAdd(Vector512.Create(weights[p + 1]), Vector512.Load(v + hd), b);
            }
            if (p < n) a = Avx512F.FusedMultiplyAdd(Vector512.Create(weights[p]), Vector512.Load(v), a);
            (a + b).Store(output + c);
        }
    }
}
