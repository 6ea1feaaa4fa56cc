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
/// plain steps'. Float32 and bf16 heads of a multiple of 16 channels on AVX-512 take fused multiply-add dots and a
/// weighted sum held in registers (bf16 keys and values widened 16 at a time in registers: one position over 200 bf16
/// keys 22.8 → 15.2 µs a layer against the portable forms, BENCHMARKS.md session 15); float16, other head sizes and
/// CPUs the <see cref="Dot"/>/<see cref="DotBf16"/>/<see cref="Axpy"/> forms.
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
    /// values. Float32 and bf16 heads of a multiple of 16 channels on AVX-512 take <see cref="Dot16Four{T}"/> and
    /// <see cref="WeightedSum16{T}"/> (fused multiply-adds, the output accumulated in registers; float32 segments of several
    /// positions <see cref="JointTask{TPositions}"/>); the rest the <see cref="Dot"/>/<see cref="Axpy"/> forms.
    /// </summary>
    private static void GroupTasks(RowJob[] jobs, int[] groups, byte* q, byte* output, ScalarType dtype, int es, Shape shape, int maxLength, int from, int to)
    {
        int hd = shape.HeadDim, heads = shape.Heads, perKv = shape.Heads / shape.KvHeads;
        var scratch = ArrayPool<float>.Shared.Rent(maxLength + 3 * hd + JointPositions * (maxLength + hd));
        try
        {
            fixed (float* sp = scratch)
            {
                float* scores = sp, qf = sp + maxLength, acc = qf + hd, row = acc + hd, joint = row + hd; // joint: JointPositions × (hd + maxLength)
                float scale = (float)shape.Scale, causalMin = (float)AttentionMask.MinValue(dtype);
                bool direct = dtype == ScalarType.BFloat16 && hd % (2 * System.Numerics.Vector<float>.Count) == 0; // bf16 keys and values read in place (DotBf16, AxpyBf16)
                bool fast = dtype == ScalarType.Float32 && Avx512F.IsSupported && hd % 16 == 0;
                bool fastBf16 = dtype == ScalarType.BFloat16 && Avx512F.IsSupported && hd % 16 == 0; // bf16 keys and values widened 16 at a time in registers
                for (int t = from; t < to; t++)
                {
                    int g = t / heads, h = t % heads, first = groups[g], count = groups[g + 1] - first, kvHead = h / perKv;
                    ref readonly var lead = ref jobs[first];
                    byte* keys = lead.K + kvHead * lead.Capacity * hd * es, values = lead.V + kvHead * lead.Capacity * hd * es;
                    if (fast && count > 1)
                    {
                        // A segment's positions together, at most JointPositions at a time: each key and value row is read
                        // once for all of them (JointTask), with the one-position arithmetic per position.
                        for (int at = 0; at < count; at += JointPositions)
                        {
                            int size = Math.Min(JointPositions, count - at);
                            var part = new ReadOnlySpan<RowJob>(jobs, first + at, size);
                            switch (size)
                            {
                                case 1: JointTask<P1>(part, q, output, heads, h, hd, scale, causalMin, (float*)keys, (float*)values, joint, maxLength); break;
                                case 2: JointTask<P2>(part, q, output, heads, h, hd, scale, causalMin, (float*)keys, (float*)values, joint, maxLength); break;
                                case 3: JointTask<P3>(part, q, output, heads, h, hd, scale, causalMin, (float*)keys, (float*)values, joint, maxLength); break;
                                case 4: JointTask<P4>(part, q, output, heads, h, hd, scale, causalMin, (float*)keys, (float*)values, joint, maxLength); break;
                                default: JointTask<P5>(part, q, output, heads, h, hd, scale, causalMin, (float*)keys, (float*)values, joint, maxLength); break;
                            }
                        }
                        continue;
                    }
                    for (int i = 0; i < count; i++)
                    {
                        ref readonly var job = ref jobs[first + i];
                        int n = job.Length;
                        Widen(q + (job.FlatRow * heads + h) * hd * es, dtype, qf, hd);
                        for (int c = 0; c < hd; c++) qf[c] *= scale;
                        float max = float.NegativeInfinity;
                        if (fast || fastBf16)
                            for (int p = 0; p < n; p += 4) // four keys a pass: each key's dot is the same bits whichever four it is among
                            {
                                byte* k0 = keys + (long)p * hd * es, k1 = p + 1 < n ? k0 + hd * es : k0, k2 = p + 2 < n ? k0 + 2 * hd * es : k0, k3 = p + 3 < n ? k0 + 3 * hd * es : k0;
                                var four = fast ? Dot16Four<Float32s>(qf, k0, k1, k2, k3, hd) : Dot16Four<Bf16s>(qf, k0, k1, k2, k3, hd);
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
                            WeightedSum16<Float32s>(scores, values, n, hd, (float*)(output + (job.FlatRow * heads + h) * hd * es));
                            continue;
                        }
                        if (fastBf16)
                        {
                            Normalise(scores, n, sum);
                            WeightedSum16<Bf16s>(scores, values, n, hd, acc);
                            Narrow(acc, output + (job.FlatRow * heads + h) * hd * es, dtype, hd);
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

    /// <summary>Positions of a segment row that <see cref="JointTask{TPositions}"/> takes at once: 5 × 4 accumulators of four
    /// keys' dots, the four keys and a query vector fit the 32 zmm registers (k + 1 = 5: a verification of 4 drafts).</summary>
    internal const int JointPositions = 5;

    /// <summary>The number of positions of a <see cref="JointTask{TPositions}"/> as a type (a constant in each one's code,
    /// the unused accumulators removed, as the fp32 kernel's row counts are).</summary>
    private interface IPositions { static abstract int Value { get; } }
    private struct P1 : IPositions { public static int Value => 1; }
    private struct P2 : IPositions { public static int Value => 2; }
    private struct P3 : IPositions { public static int Value => 3; }
    private struct P4 : IPositions { public static int Value => 4; }
    private struct P5 : IPositions { public static int Value => 5; }

    /// <summary>
    /// Head <paramref name="h"/> of 1..<see cref="JointPositions"/> positions of one segment row (<paramref name="jobs"/>,
    /// in order; float32, AVX-512, a multiple of 16 channels) together: every key row is loaded once for all the positions'
    /// dots and every value row once for all their weighted sums, where a position at a time read the head's keys and values
    /// again for each (from L2: 2 × 200 × 64 floats outgrow L1). Per position the arithmetic is the one-position task's —
    /// the same products of the same query (scaled, as there) and key in the same order (<see cref="Dot16Four{T}"/>'s: a first
    /// product, then fused multiply-adds, the four keys' lanes summed by <see cref="Fp32Kernels.Sums"/>), the same mask,
    /// causal bound, <see cref="Exponentials"/> and <see cref="Normalise"/> over its own keys, and the weighted sum's even
    /// and odd chains per 16 channels (<see cref="WeightedSum16{T}"/>); the keys past a position's own (the later positions of
    /// its segment) get an exact zero weight there, as a masked key does. So each position's output is the same bits as
    /// alone (SegmentAttentionKernelTests). <paramref name="scratch"/>: <see cref="JointPositions"/> × (hd + maxLength) floats.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void JointTask<TPositions>(ReadOnlySpan<RowJob> jobs, byte* q, byte* output, int heads, int h, int hd, float scale, float causalMin,
        float* keys, float* values, float* scratch, int maxLength) where TPositions : struct, IPositions
    {
        int count = TPositions.Value, nMax = 0;
        float* queries = scratch, weights = scratch + JointPositions * hd; // position i: queries + i·hd, weights + i·maxLength
        for (int i = 0; i < count; i++)
        {
            float* qi = queries + i * hd;
            Buffer.MemoryCopy(q + (jobs[i].FlatRow * heads + h) * hd * 4, qi, hd * 4L, hd * 4L);
            for (int c = 0; c < hd; c++) qi[c] *= scale;
            nMax = Math.Max(nMax, jobs[i].Length);
        }
        float* q0 = queries, q1 = queries + hd, q2 = queries + 2 * hd, q3 = queries + 3 * hd, q4 = queries + 4 * hd;
        float* w0 = weights, w1 = weights + maxLength, w2 = weights + 2 * maxLength, w3 = weights + 3 * maxLength, w4 = weights + 4 * maxLength;
        // The dots: four keys at a time (past nMax the last pointer repeats key p, as Dot16Four's callers do), each position's
        // raw dots into its row of weights.
        for (int p = 0; p < nMax; p += 4)
        {
            float* k0 = keys + (long)p * hd, k1 = p + 1 < nMax ? k0 + hd : k0, k2 = p + 2 < nMax ? k0 + 2 * hd : k0, k3 = p + 3 < nMax ? k0 + 3 * hd : k0;
            var kv0 = Vector512.Load(k0);
            var kv1 = Vector512.Load(k1);
            var kv2 = Vector512.Load(k2);
            var kv3 = Vector512.Load(k3);
            var x = Vector512.Load(q0);
            Vector512<float> a00 = Avx512F.Multiply(x, kv0), a01 = Avx512F.Multiply(x, kv1), a02 = Avx512F.Multiply(x, kv2), a03 = Avx512F.Multiply(x, kv3);
            Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default, a20 = default, a21 = default, a22 = default, a23 = default;
            Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default, a40 = default, a41 = default, a42 = default, a43 = default;
            if (count > 1) { x = Vector512.Load(q1); a10 = Avx512F.Multiply(x, kv0); a11 = Avx512F.Multiply(x, kv1); a12 = Avx512F.Multiply(x, kv2); a13 = Avx512F.Multiply(x, kv3); }
            if (count > 2) { x = Vector512.Load(q2); a20 = Avx512F.Multiply(x, kv0); a21 = Avx512F.Multiply(x, kv1); a22 = Avx512F.Multiply(x, kv2); a23 = Avx512F.Multiply(x, kv3); }
            if (count > 3) { x = Vector512.Load(q3); a30 = Avx512F.Multiply(x, kv0); a31 = Avx512F.Multiply(x, kv1); a32 = Avx512F.Multiply(x, kv2); a33 = Avx512F.Multiply(x, kv3); }
            if (count > 4) { x = Vector512.Load(q4); a40 = Avx512F.Multiply(x, kv0); a41 = Avx512F.Multiply(x, kv1); a42 = Avx512F.Multiply(x, kv2); a43 = Avx512F.Multiply(x, kv3); }
            for (int c = 16; c < hd; c += 16)
            {
                kv0 = Vector512.Load(k0 + c);
                kv1 = Vector512.Load(k1 + c);
                kv2 = Vector512.Load(k2 + c);
                kv3 = Vector512.Load(k3 + c);
                x = Vector512.Load(q0 + c);
                a00 = Avx512F.FusedMultiplyAdd(x, kv0, a00); a01 = Avx512F.FusedMultiplyAdd(x, kv1, a01); a02 = Avx512F.FusedMultiplyAdd(x, kv2, a02); a03 = Avx512F.FusedMultiplyAdd(x, kv3, a03);
                if (count > 1) { x = Vector512.Load(q1 + c); a10 = Avx512F.FusedMultiplyAdd(x, kv0, a10); a11 = Avx512F.FusedMultiplyAdd(x, kv1, a11); a12 = Avx512F.FusedMultiplyAdd(x, kv2, a12); a13 = Avx512F.FusedMultiplyAdd(x, kv3, a13); }
                if (count > 2) { x = Vector512.Load(q2 + c); a20 = Avx512F.FusedMultiplyAdd(x, kv0, a20); a21 = Avx512F.FusedMultiplyAdd(x, kv1, a21); a22 = Avx512F.FusedMultiplyAdd(x, kv2, a22); a23 = Avx512F.FusedMultiplyAdd(x, kv3, a23); }
                if (count > 3) { x = Vector512.Load(q3 + c); a30 = Avx512F.FusedMultiplyAdd(x, kv0, a30); a31 = Avx512F.FusedMultiplyAdd(x, kv1, a31); a32 = Avx512F.FusedMultiplyAdd(x, kv2, a32); a33 = Avx512F.FusedMultiplyAdd(x, kv3, a33); }
                if (count > 4) { x = Vector512.Load(q4 + c); a40 = Avx512F.FusedMultiplyAdd(x, kv0, a40); a41 = Avx512F.FusedMultiplyAdd(x, kv1, a41); a42 = Avx512F.FusedMultiplyAdd(x, kv2, a42); a43 = Avx512F.FusedMultiplyAdd(x, kv3, a43); }
            }
            // Each position's four sums stored whole: the weights rows have room past nMax (maxLength ≥ nMax + 3 is not
            // promised, so the last group of four goes through a small buffer).
            StoreFour(Fp32Kernels.Sums(a00, a01, a02, a03), w0, p, nMax);
            if (count > 1) StoreFour(Fp32Kernels.Sums(a10, a11, a12, a13), w1, p, nMax);
            if (count > 2) StoreFour(Fp32Kernels.Sums(a20, a21, a22, a23), w2, p, nMax);
            if (count > 3) StoreFour(Fp32Kernels.Sums(a30, a31, a32, a33), w3, p, nMax);
            if (count > 4) StoreFour(Fp32Kernels.Sums(a40, a41, a42, a43), w4, p, nMax);
        }
        // Per position: its mask and causal bound over its own keys, softmax, normalised; exact zeros past its own keys.
        for (int i = 0; i < count; i++)
        {
            ref readonly var job = ref jobs[i];
            float* s = weights + i * maxLength;
            int n = job.Length;
            float max = float.NegativeInfinity;
            for (int p = 0; p < n; p++)
            {
                float v = s[p];
                if (job.Mask is not null) v += Read(job.Mask, job.MaskType, p);
                if (p > job.Causal) v += causalMin;
                s[p] = v;
                if (v > max) max = v;
            }
            float sum = Exponentials(s, n, max);
            Normalise(s, n, sum);
            new Span<float>(s + n, nMax - n).Clear();
        }
        // The weighted sums, 32 channels a pass: per position two 16-channel blocks, each with its even-key and odd-key chain.
        for (int c = 0; c < hd; c += 32)
        {
            bool two = c + 32 <= hd; // else the last 16 channels
            Vector512<float> e00 = default, e01 = default, o00 = default, o01 = default, e10 = default, e11 = default, o10 = default, o11 = default;
            Vector512<float> e20 = default, e21 = default, o20 = default, o21 = default, e30 = default, e31 = default, o30 = default, o31 = default;
            Vector512<float> e40 = default, e41 = default, o40 = default, o41 = default;
            float* v = values + c;
            int p = 0;
            for (; p + 2 <= nMax; p += 2, v += 2 * hd)
            {
                var ve0 = Vector512.Load(v);
                var ve1 = two ? Vector512.Load(v + 16) : default;
                var vo0 = Vector512.Load(v + hd);
                var vo1 = two ? Vector512.Load(v + hd + 16) : default;
                Vector512<float> we = Vector512.Create(w0[p]), wo = Vector512.Create(w0[p + 1]);
                e00 = Avx512F.FusedMultiplyAdd(we, ve0, e00); e01 = Avx512F.FusedMultiplyAdd(we, ve1, e01); o00 = Avx512F.FusedMultiplyAdd(wo, vo0, o00); o01 = Avx512F.FusedMultiplyAdd(wo, vo1, o01);
                if (count > 1) { we = Vector512.Create(w1[p]); wo = Vector512.Create(w1[p + 1]); e10 = Avx512F.FusedMultiplyAdd(we, ve0, e10); e11 = Avx512F.FusedMultiplyAdd(we, ve1, e11); o10 = Avx512F.FusedMultiplyAdd(wo, vo0, o10); o11 = Avx512F.FusedMultiplyAdd(wo, vo1, o11); }
                if (count > 2) { we = Vector512.Create(w2[p]); wo = Vector512.Create(w2[p + 1]); e20 = Avx512F.FusedMultiplyAdd(we, ve0, e20); e21 = Avx512F.FusedMultiplyAdd(we, ve1, e21); o20 = Avx512F.FusedMultiplyAdd(wo, vo0, o20); o21 = Avx512F.FusedMultiplyAdd(wo, vo1, o21); }
                if (count > 3) { we = Vector512.Create(w3[p]); wo = Vector512.Create(w3[p + 1]); e30 = Avx512F.FusedMultiplyAdd(we, ve0, e30); e31 = Avx512F.FusedMultiplyAdd(we, ve1, e31); o30 = Avx512F.FusedMultiplyAdd(wo, vo0, o30); o31 = Avx512F.FusedMultiplyAdd(wo, vo1, o31); }
                if (count > 4) { we = Vector512.Create(w4[p]); wo = Vector512.Create(w4[p + 1]); e40 = Avx512F.FusedMultiplyAdd(we, ve0, e40); e41 = Avx512F.FusedMultiplyAdd(we, ve1, e41); o40 = Avx512F.FusedMultiplyAdd(wo, vo0, o40); o41 = Avx512F.FusedMultiplyAdd(wo, vo1, o41); }
            }
            if (p < nMax)
            {
                var ve0 = Vector512.Load(v);
                var ve1 = two ? Vector512.Load(v + 16) : default;
                Vector512<float> we = Vector512.Create(w0[p]);
                e00 = Avx512F.FusedMultiplyAdd(we, ve0, e00); e01 = Avx512F.FusedMultiplyAdd(we, ve1, e01);
                if (count > 1) { we = Vector512.Create(w1[p]); e10 = Avx512F.FusedMultiplyAdd(we, ve0, e10); e11 = Avx512F.FusedMultiplyAdd(we, ve1, e11); }
                if (count > 2) { we = Vector512.Create(w2[p]); e20 = Avx512F.FusedMultiplyAdd(we, ve0, e20); e21 = Avx512F.FusedMultiplyAdd(we, ve1, e21); }
                if (count > 3) { we = Vector512.Create(w3[p]); e30 = Avx512F.FusedMultiplyAdd(we, ve0, e30); e31 = Avx512F.FusedMultiplyAdd(we, ve1, e31); }
                if (count > 4) { we = Vector512.Create(w4[p]); e40 = Avx512F.FusedMultiplyAdd(we, ve0, e40); e41 = Avx512F.FusedMultiplyAdd(we, ve1, e41); }
            }
            StoreOutput(output, jobs[0].FlatRow, heads, h, hd, c, two, e00 + o00, e01 + o01);
            if (count > 1) StoreOutput(output, jobs[1].FlatRow, heads, h, hd, c, two, e10 + o10, e11 + o11);
            if (count > 2) StoreOutput(output, jobs[2].FlatRow, heads, h, hd, c, two, e20 + o20, e21 + o21);
            if (count > 3) StoreOutput(output, jobs[3].FlatRow, heads, h, hd, c, two, e30 + o30, e31 + o31);
            if (count > 4) StoreOutput(output, jobs[4].FlatRow, heads, h, hd, c, two, e40 + o40, e41 + o41);
        }
    }

    /// <summary>Four keys' dots [p, p + 4) into a position's row, those below <paramref name="n"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreFour(Vector128<float> four, float* row, int p, int n)
    {
        if (p + 4 <= n) four.Store(row + p);
        else for (int j = 0; p + j < n; j++) row[p + j] = four.GetElement(j);
    }

    /// <summary>A position's output channels [c, c + 32) of head h (the first 16 only where <paramref name="two"/> is false).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreOutput(byte* output, long flatRow, int heads, int h, int hd, int c, bool two, Vector512<float> first, Vector512<float> second)
    {
        float* o = (float*)(output + (flatRow * heads + h) * hd * 4) + c;
        first.Store(o);
        if (two) second.Store(o + 16);
    }

    /// <summary>How a cache's keys and values become float32, 16 channels at a time (AVX-512), as a type (a constant in
    /// each kernel's code): float32 as they are, bf16 widened in registers (a bf16 is a float32's high half: exact). Both
    /// dtypes go through the same arithmetic below.</summary>
    private interface ICacheFloats
    {
        static abstract Vector512<float> Load16(byte* at);
        static abstract int Size { get; }
    }
    private struct Float32s : ICacheFloats
    {
        public static Vector512<float> Load16(byte* at) => Vector512.Load((float*)at);
        public static int Size => 4;
    }
    private struct Bf16s : ICacheFloats
    {
        public static Vector512<float> Load16(byte* at) => StepKernels.Widen16(Vector256.Load((ushort*)at));
        public static int Size => 2;
    }

    /// <summary>
    /// q·k for four keys over n channels (a multiple of 16) of <typeparamref name="T"/>: per key a product of the first 16
    /// channels, fused multiply-adds of the rest into its one 16-lane accumulator, and the four accumulators' lanes summed
    /// together (<see cref="Fp32Kernels.Sums"/>: a dozen instructions where one <c>Vector512.Sum</c> per key took about 25).
    /// A key's dot is the same bits in any of the four places, so a position's scores do not depend on how its keys fall
    /// into fours. bf16 keys: one position over 200 of them 22.8 → 15.2 µs a layer against the portable forms (session 15).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Dot16Four<T>(float* q, byte* k0, byte* k1, byte* k2, byte* k3, int n) where T : struct, ICacheFloats
    {
        var x = Vector512.Load(q);
        var a0 = Avx512F.Multiply(x, T.Load16(k0));
        var a1 = Avx512F.Multiply(x, T.Load16(k1));
        var a2 = Avx512F.Multiply(x, T.Load16(k2));
        var a3 = Avx512F.Multiply(x, T.Load16(k3));
        for (int i = 16; i < n; i += 16)
        {
            x = Vector512.Load(q + i);
            int at = i * T.Size;
            a0 = Avx512F.FusedMultiplyAdd(x, T.Load16(k0 + at), a0);
            a1 = Avx512F.FusedMultiplyAdd(x, T.Load16(k1 + at), a1);
            a2 = Avx512F.FusedMultiplyAdd(x, T.Load16(k2 + at), a2);
            a3 = Avx512F.FusedMultiplyAdd(x, T.Load16(k3 + at), a3);
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
    /// output[c] = Σ_p weights[p]·values[p, c] over n rows of hd channels of <typeparamref name="T"/> (a multiple of 16),
    /// into float32: 64 channels at a time, the even keys and the odd keys each into their own four 16-lane accumulators
    /// held in registers (two chains of fused multiply-adds per channel block instead of one: a chain's four-cycle latency
    /// per key had set the pace), added at the end. Which accumulator a key goes to depends on its index alone, and a
    /// masked key's weight is an exact zero, so a position's output is the same bits over its own keys or over a
    /// segment's longer, masked range.
    /// </summary>
    private static void WeightedSum16<T>(float* weights, byte* values, int n, int hd, float* output) where T : struct, ICacheFloats
    {
        int c = 0, row = hd * T.Size, c16 = 16 * T.Size;
        for (; c + 64 <= hd; c += 64)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            byte* v = values + c * T.Size;
            int p = 0;
            for (; p + 2 <= n; p += 2, v += 2 * row)
            {
                var w = Vector512.Create(weights[p]);
                var u = Vector512.Create(weights[p + 1]);
                a0 = Avx512F.FusedMultiplyAdd(w, T.Load16(v), a0);
                a1 = Avx512F.FusedMultiplyAdd(w, T.Load16(v + c16), a1);
                a2 = Avx512F.FusedMultiplyAdd(w, T.Load16(v + 2 * c16), a2);
                a3 = Avx512F.FusedMultiplyAdd(w, T.Load16(v + 3 * c16), a3);
                b0 = Avx512F.FusedMultiplyAdd(u, T.Load16(v + row), b0);
                b1 = Avx512F.FusedMultiplyAdd(u, T.Load16(v + row + c16), b1);
                b2 = Avx512F.FusedMultiplyAdd(u, T.Load16(v + row + 2 * c16), b2);
                b3 = Avx512F.FusedMultiplyAdd(u, T.Load16(v + row + 3 * c16), b3);
            }
            if (p < n)
            {
                var w = Vector512.Create(weights[p]);
                a0 = Avx512F.FusedMultiplyAdd(w, T.Load16(v), a0);
                a1 = Avx512F.FusedMultiplyAdd(w, T.Load16(v + c16), a1);
                a2 = Avx512F.FusedMultiplyAdd(w, T.Load16(v + 2 * c16), a2);
                a3 = Avx512F.FusedMultiplyAdd(w, T.Load16(v + 3 * c16), a3);
            }
            (a0 + b0).Store(output + c);
            (a1 + b1).Store(output + c + 16);
            (a2 + b2).Store(output + c + 32);
            (a3 + b3).Store(output + c + 48);
        }
        for (; c < hd; c += 16)
        {
            Vector512<float> a = default, b = default;
            byte* v = values + c * T.Size;
            int p = 0;
            for (; p + 2 <= n; p += 2, v += 2 * row)
            {
                a = Avx512F.FusedMultiplyAdd(Vector512.Create(weights[p]), T.Load16(v), a);
                b = Avx512F.FusedMultiplyAdd(Vector512.Create(weights[p + 1]), T.Load16(v + row), b);
            }
            if (p < n) a = Avx512F.FusedMultiplyAdd(Vector512.Create(weights[p]), T.Load16(v), a);
            (a + b).Store(output + c);
        }
    }
}
