using System.Buffers;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// The multi-position half of <see cref="DecodeAttention"/>: a segment of several positions per row (a speculative
/// verification: the last token and its k drafts, ≤ <see cref="DecodeAttention.MaxPositions"/>) attends as one task per
/// (row, head) over all its positions, instead of one task per (position, head). The head's keys and values are read
/// once per key for every position of the segment (each key loaded — and, for float16, widened — once, then dotted with
/// each position's query), where one task per position read the head's whole cache again for each position, from L2
/// or memory: a 5-position segment over a 200-position past cost ≈ 3.3× one position's attention (BENCHMARKS.md,
/// "Session 12 — verification pass"). Each position's arithmetic is the one-position task's, in the same order (the
/// same <see cref="Dot"/>/<see cref="DotBf16"/> per key, mask and causal bound, the max, the exponentials summed in key
/// order, the weighted values accumulated in key order): its output is bit for bit what the same position gives as a
/// decode row of its own, so a verification pass's logits equal the plain steps' as before.
/// </summary>
public static unsafe partial class DecodeAttention
{
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
    /// Tasks [from, to) of a step with multi-position segments: task t is group t ÷ heads (one segment row, its 1 to
    /// <see cref="MaxPositions"/> positions, which share the row's cache block) and head t mod heads.
    /// </summary>
    private static void GroupTasks(RowJob[] jobs, int[] groups, byte* q, byte* output, ScalarType dtype, int es, Shape shape, int maxLength, int from, int to)
    {
        int hd = shape.HeadDim, heads = shape.Heads, perKv = shape.Heads / shape.KvHeads;
        var scratch = ArrayPool<float>.Shared.Rent(MaxPositions * (maxLength + 2 * hd) + hd);
        try
        {
            fixed (float* sp = scratch)
            {
                float* scores = sp, qf = sp + MaxPositions * maxLength, acc = qf + MaxPositions * hd, row = acc + MaxPositions * hd;
                float scale = (float)shape.Scale, causalMin = (float)AttentionMask.MinValue(dtype);
                bool direct = dtype == ScalarType.BFloat16 && hd % (2 * System.Numerics.Vector<float>.Count) == 0; // as the one-position task
                int* length = stackalloc int[MaxPositions];
                float* max = stackalloc float[MaxPositions];
                float* sum = stackalloc float[MaxPositions];
                for (int t = from; t < to; t++)
                {
                    int g = t / heads, h = t % heads, first = groups[g], count = groups[g + 1] - first, kvHead = h / perKv;
                    if (count > MaxPositions) throw new InvalidOperationException($"a segment row of {count} positions; the kernel takes at most {MaxPositions}");
                    ref readonly var lead = ref jobs[first];
                    byte* keys = lead.K + kvHead * lead.Capacity * hd * es, values = lead.V + kvHead * lead.Capacity * hd * es;
                    int n = 0;
                    for (int i = 0; i < count; i++)
                    {
                        ref readonly var job = ref jobs[first + i];
                        length[i] = job.Length;
                        n = Math.Max(n, job.Length);
                        max[i] = float.NegativeInfinity;
                        float* qi = qf + i * hd;
                        Widen(q + (job.FlatRow * heads + h) * hd * es, dtype, qi, hd);
                        for (int c = 0; c < hd; c++) qi[c] *= scale;
                    }
                    // Scores: each key once, dotted with every position that sees it.
                    for (int p = 0; p < n; p++)
                    {
                        byte* key = keys + (long)p * hd * es;
                        float* kf = direct ? null : dtype == ScalarType.Float32 ? (float*)key : Widen(key, dtype, row, hd);
                        for (int i = 0; i < count; i++)
                        {
                            if (p >= length[i]) continue;
                            ref readonly var job = ref jobs[first + i];
                            float s = direct ? DotBf16(qf + i * hd, (ushort*)key, hd) : Dot(qf + i * hd, kf, hd);
                            if (job.Mask is not null) s += Read(job.Mask, job.MaskType, p);
                            if (p > job.Causal) s += causalMin;
                            scores[i * maxLength + p] = s;
                            if (s > max[i]) max[i] = s;
                        }
                    }
                    for (int i = 0; i < count; i++)
                    {
                        float* si = scores + i * maxLength;
                        float total = 0;
                        for (int p = 0; p < length[i]; p++) total += si[p] = MathF.Exp(si[p] - max[i]);
                        sum[i] = total;
                        new Span<float>(acc + i * hd, hd).Clear();
                    }
                    // Weighted values: each value once, added into every position that sees it, in key order.
                    for (int p = 0; p < n; p++)
                    {
                        byte* value = values + (long)p * hd * es;
                        float* vf = direct ? null : dtype == ScalarType.Float32 ? (float*)value : Widen(value, dtype, row, hd);
                        for (int i = 0; i < count; i++)
                        {
                            if (p >= length[i]) continue;
                            float weight = scores[i * maxLength + p] / sum[i];
                            if (direct) AxpyBf16(weight, (ushort*)value, acc + i * hd, hd);
                            else Axpy(weight, vf, acc + i * hd, hd);
                        }
                    }
                    for (int i = 0; i < count; i++)
                        Narrow(acc + i * hd, output + (jobs[first + i].FlatRow * heads + h) * hd * es, dtype, hd);
                }
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(scratch);
        }
    }
}
