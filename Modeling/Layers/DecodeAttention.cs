using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using ShardPipe.Modeling.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// Attention of every decode row of a merged step in one call (continuous batching): each row — one new position of a
/// request, whose past lies in its own <see cref="KvCache"/> — appends its key and value to its cache and attends over
/// that cache's filled part, read in place (no padding, no gather). A segment of a few positions per row (a speculative
/// verification: the last token and its drafts) runs here too, each position a query row of its own that sees the past
/// and the segment's positions up to itself (causal order inside the segment, or the segment's mask). The rows of all requests and all heads are spread
/// over the decode kernels' <see cref="SpinPool"/>; scores, softmax and the weighted sum run in float32 whatever the
/// model's dtype (float32, bf16 or fp16), with the additive mask of the row's request when it has one (left padding,
/// a sliding window). The libtorch calls of a layer's attention no longer grow with the number of requests: the output
/// tensor, views of q, k and v, and a cache buffer's growth when it doubles (amortised).
/// </summary>
public static unsafe partial class DecodeAttention
{
    /// <summary>
    /// A family's attention: <see cref="Heads"/> query heads reading <see cref="KvHeads"/> key/value heads (grouped-query:
    /// head h reads kv head h ÷ (heads ÷ kv heads), as <c>repeat_interleave</c> does), <see cref="HeadDim"/> channels,
    /// scores q·k × <see cref="Scale"/>.
    /// </summary>
    public readonly record struct Shape(int Heads, int KvHeads, int HeadDim, double Scale);

    /// <summary>
    /// Elements (keys and values read, over all rows and heads) below which one thread runs the whole step: 32 K (a few
    /// microseconds on one core). A single request's decode step reads ≈ 0.1–0.5 M per layer (12 heads × 64 channels ×
    /// 2 over 40–200 positions): tens of microseconds per layer that once ran on one thread (1 << 21 here), about half
    /// of a bf16 token's time outside the Linears (BENCHMARKS.md, session 10 round 2). The helpers are spinning then —
    /// the q, k, v projections just ran on them — so handing them half costs about a microsecond.
    /// </summary>
    internal const long ParallelWork = 1 << 15;

    /// <summary>Whether the kernel takes tensors of this dtype on this device.</summary>
    public static bool Supports(Tensor q) =>
        q.device_type == DeviceType.CPU && q.dtype is ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16;

    /// <summary>
    /// The most positions per row a segment may bring to this kernel: a decode step (1) and a speculative verification
    /// (the last token and its drafts, k + 1 ≤ 8) attend here; longer segments (prompts) go to libtorch's attention.
    /// </summary>
    public const int MaxPositions = 8;

    /// <summary>
    /// Whether a segment's attention can run here: at most <see cref="MaxPositions"/> positions per row, a cache to append
    /// to, and either no mask (causal order inside the segment: its position t sees the past and positions ≤ t), the
    /// per-position additive mask <c>(B, 1, T, Tk)</c> that <see cref="AttentionMask.Build"/> makes (causal order,
    /// padding, a sliding window all in it), or a padding mask <c>(B, 1, 1, Tk)</c> broadcast over the positions
    /// (GPT-2's), with causal order added as GPT-2 adds it (the dtype's minimum on later positions).
    /// </summary>
    public static bool Takes(RaggedBatch.Segment s)
    {
        if (s.Tokens > MaxPositions || s.Inputs?.Cache is null) return false;
        var m = s.Inputs.Mask;
        return m is null || m.dim() == 4 && m.Shape()[0] == s.Rows && m.Shape()[1] == 1 && (m.Shape()[2] == s.Tokens || m.Shape()[2] == 1)
            && m.device_type == DeviceType.CPU && m.is_contiguous() && m.dtype is ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16;
    }

    /// <summary>One decode row's work: where its cache's keys and values lie, how many positions it sees, its mask row.</summary>
    private struct RowJob
    {
        public byte* K, V;      // this row's (kv_heads, capacity, head_dim) block of its cache's buffers
        public long Capacity;
        public int Length;      // positions to attend over: the past and the segment's positions up to this one (with a mask: all it covers)
        public byte* Mask;      // (Length) additive, or null
        public int Causal;      // positions after this one get the dtype's minimum added (a broadcast padding mask), or int.MaxValue
        public ScalarType MaskType;
        public long FlatRow;    // the row's index in the flat (N, …) tensors
    }

    /// <summary>
    /// For the <paramref name="segments"/> (each taken by <see cref="Takes"/>) of layer <paramref name="layer"/>: appends
    /// each position's key and value (rows of <paramref name="k"/>, <paramref name="v"/>: (N, kv_heads·head_dim)) to its
    /// request's cache and writes its attention over the cache (queries: rows of <paramref name="q"/>, (N, heads·head_dim))
    /// into the same row of <paramref name="output"/> (N, heads·head_dim). Other rows of the output are left as they are.
    /// </summary>
    public static void Run(int layer, Tensor q, Tensor k, Tensor v, Shape shape, IReadOnlyList<RaggedBatch.Segment> segments, Tensor output)
    {
        int hd = shape.HeadDim, heads = shape.Heads, kvHeads = shape.KvHeads;
        if (heads <= 0 || kvHeads <= 0 || heads % kvHeads != 0) throw new ArgumentException($"{heads} heads over {kvHeads} kv heads");
        var dtype = q.dtype;
        if (k.dtype != dtype || v.dtype != dtype || output.dtype != dtype) throw new ArgumentException("q, k, v and the output must share a dtype");
        if (q.Shape()[^1] != (long)heads * hd || k.Shape()[^1] != (long)kvHeads * hd || v.Shape()[^1] != (long)kvHeads * hd || output.Shape()[^1] != (long)heads * hd || !output.is_contiguous())
            throw new ArgumentException("q, k, v or the output do not match the attention's shape");
        Tensor Dense(Tensor t) => t.is_contiguous() ? t : t.contiguous();
        var qc = Dense(q);
        var kc = Dense(k);
        var vc = Dense(v);
        int es = (int)q.ElementSize;
        byte* qp = (byte*)TensorMemory.Pointer(qc), kp = (byte*)TensorMemory.Pointer(kc), vp = (byte*)TensorMemory.Pointer(vc), op = (byte*)TensorMemory.Pointer(output);
        long kvRow = (long)kvHeads * hd;

        int rowCount = 0; // query rows: every position of every segment
        foreach (var s in segments) rowCount += checked((int)s.Count);
        var jobs = ArrayPool<RowJob>.Shared.Rent(rowCount);
        try
        {
            int r = 0, maxLength = 0;
            long work = 0;
            foreach (var s in segments)
            {
                int tokens = (int)s.Tokens;
                var (kBuf, vBuf, start) = s.Inputs.Cache!.Append(layer, s.Rows, kvHeads, hd, dtype, CPU, tokens);
                long capacity = kBuf.Shape()[2];
                byte* kb = (byte*)TensorMemory.Pointer(kBuf), vb = (byte*)TensorMemory.Pointer(vBuf);
                int keys = checked((int)(start + tokens)); // the past and the segment's positions
                var mask = s.Inputs.Mask;
                var maskShape = mask?.Shape();
                if (maskShape is not null && maskShape[3] != keys)
                    throw new InvalidOperationException($"layer {layer}: a segment's mask covers {maskShape[3]} positions, its cache {keys}");
                byte* mp = mask is null ? null : (byte*)TensorMemory.Pointer(mask);
                bool perPosition = maskShape is not null && maskShape[2] == tokens; // else (B, 1, 1, Tk), the same row for every position
                for (long b = 0; b < s.Rows; b++)
                {
                    long block = b * kvHeads * capacity * hd; // elements to row b's block of the buffers
                    for (int t = 0; t < tokens; t++)
                    {
                        long flat = s.Offset + b * tokens + t;
                        for (int j = 0; j < kvHeads; j++)
                        {
                            long at = (block + (j * capacity + start + t) * hd) * es;
                            long from = (flat * kvRow + (long)j * hd) * es;
                            Buffer.MemoryCopy(kp + from, kb + at, hd * es, hd * es);
                            Buffer.MemoryCopy(vp + from, vb + at, hd * es, hd * es);
                        }
                        // With a mask, every key it covers (masked ones add its minimum, as libtorch's softmax sees them);
                        // without, causal order: the past and the segment's positions up to this one.
                        int length = mask is null ? checked((int)(start + t + 1)) : keys;
                        long maskRow = mask is null ? 0 : perPosition ? b * tokens + t : b;
                        jobs[r++] = new RowJob
                        {
                            K = kb + block * es, V = vb + block * es, Capacity = capacity, Length = length,
                            Mask = mp is null ? null : mp + maskRow * keys * mask!.ElementSize, MaskType = mask?.dtype ?? dtype, FlatRow = flat,
                            Causal = mask is null || perPosition ? int.MaxValue : checked((int)(start + t)),
                        };
                        work += length;
                    }
                }
                maxLength = Math.Max(maxLength, keys);
            }
            work *= 2L * heads * hd;
            // One task per (segment row, head) over all the row's positions (one for a decode row; the last token and its
            // drafts for a verification segment): DecodeAttentionSegments.cs.
            var groups = GroupStarts(segments);
            int tasks = (groups.Length - 1) * heads;
            // Several parts per thread, claimed one at a time (as the Linears' jobs): a helper the OS preempts mid-step
            // (a loaded machine, another node's process) holds back one small part, not half the heads.
            int parts = work < ParallelWork ? 1 : Math.Clamp(Math.Min(get_num_threads(), SpinPool.Shared.Helpers + 1) * SpinPool.PartsPerThread, 1, tasks);
            var job = new Job(jobs, qp, op, dtype, es, shape, maxLength, groups);
            if (parts == 1) job.Tasks(0, tasks);
            else SpinPool.Shared.Run(parts, p => job.Tasks(SpinPool.Bound(tasks, p, parts), SpinPool.Bound(tasks, p + 1, parts)));
        }
        finally
        {
            ArrayPool<RowJob>.Shared.Return(jobs);
        }
        if (!ReferenceEquals(qc, q)) qc.Dispose();
        if (!ReferenceEquals(kc, k)) kc.Dispose();
        if (!ReferenceEquals(vc, v)) vc.Dispose();
    }

    /// <summary>The step's (segment row, head) tasks (DecodeAttentionSegments.cs); each part of the pool takes a range of them with its own scratch.</summary>
    private sealed class Job(RowJob[] jobs, byte* q, byte* output, ScalarType dtype, int es, Shape shape, int maxLength, int[] rowStarts)
    {
        public void Tasks(int from, int to) => GroupTasks(jobs, rowStarts, q, output, dtype, es, shape, maxLength, from, to);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(float* a, float* b, int n)
    {
        int i = 0;
        var sum = Vector<float>.Zero;
        for (; i <= n - Vector<float>.Count; i += Vector<float>.Count)
            sum += Unsafe.ReadUnaligned<Vector<float>>(a + i) * Unsafe.ReadUnaligned<Vector<float>>(b + i);
        float s = Vector.Sum(sum);
        for (; i < n; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>
    /// <see cref="Dot"/> of float32 <paramref name="a"/> with bf16 <paramref name="b"/> widened in registers (a bf16 is the
    /// high half of a float32): the same products and lane sums in the same order as widening b into a row first, so
    /// the result is bit for bit <see cref="Dot"/>'s, without the pass through scratch. n: a multiple of 2·Vector&lt;float&gt;.Count.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float DotBf16(float* a, ushort* b, int n)
    {
        int c = Vector<float>.Count;
        var sum = Vector<float>.Zero;
        for (int i = 0; i < n; i += 2 * c)
        {
            Vector.Widen(Unsafe.ReadUnaligned<Vector<ushort>>(b + i), out var lo, out var hi);
            sum += Unsafe.ReadUnaligned<Vector<float>>(a + i) * Vector.AsVectorSingle(Vector.ShiftLeft(lo, 16));
            sum += Unsafe.ReadUnaligned<Vector<float>>(a + i + c) * Vector.AsVectorSingle(Vector.ShiftLeft(hi, 16));
        }
        return Vector.Sum(sum);
    }

    /// <summary><see cref="Axpy"/> with bf16 <paramref name="x"/> widened in registers (the same result); n: a multiple of 2·Vector&lt;float&gt;.Count.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AxpyBf16(float a, ushort* x, float* y, int n)
    {
        int c = Vector<float>.Count;
        var av = new Vector<float>(a);
        for (int i = 0; i < n; i += 2 * c)
        {
            Vector.Widen(Unsafe.ReadUnaligned<Vector<ushort>>(x + i), out var lo, out var hi);
            Unsafe.WriteUnaligned(y + i, Unsafe.ReadUnaligned<Vector<float>>(y + i) + av * Vector.AsVectorSingle(Vector.ShiftLeft(lo, 16)));
            Unsafe.WriteUnaligned(y + i + c, Unsafe.ReadUnaligned<Vector<float>>(y + i + c) + av * Vector.AsVectorSingle(Vector.ShiftLeft(hi, 16)));
        }
    }

    /// <summary>y += a·x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Axpy(float a, float* x, float* y, int n)
    {
        int i = 0;
        var av = new Vector<float>(a);
        for (; i <= n - Vector<float>.Count; i += Vector<float>.Count)
            Unsafe.WriteUnaligned(y + i, Unsafe.ReadUnaligned<Vector<float>>(y + i) + av * Unsafe.ReadUnaligned<Vector<float>>(x + i));
        for (; i < n; i++) y[i] += a * x[i];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] // once per key of every masked position: a call each was ≈ 5 % of a verification pass's attention
    private static float Read(byte* p, ScalarType dtype, int i) => dtype switch
    {
        ScalarType.Float32 => ((float*)p)[i],
        ScalarType.BFloat16 => StepKernels.FromBf16(((ushort*)p)[i]),
        _ => (float)((Half*)p)[i],
    };

    /// <summary>n elements of <paramref name="dtype"/> at <paramref name="src"/> as float32 into <paramref name="dst"/>; returns dst.</summary>
    private static float* Widen(byte* src, ScalarType dtype, float* dst, int n)
    {
        switch (dtype)
        {
            case ScalarType.Float32:
                Buffer.MemoryCopy(src, dst, n * 4L, n * 4L);
                break;
            case ScalarType.BFloat16:
            {
                var s = (ushort*)src;
                int i = 0;
                for (; i <= n - 8; i += 8)
                {
                    var x = Vector128.Load(s + i);
                    Vector128.ShiftLeft(Vector128.WidenLower(x), 16).AsSingle().Store(dst + i);
                    Vector128.ShiftLeft(Vector128.WidenUpper(x), 16).AsSingle().Store(dst + i + 4);
                }
                for (; i < n; i++) dst[i] = StepKernels.FromBf16(s[i]);
                break;
            }
            default:
                for (int i = 0; i < n; i++) dst[i] = (float)((Half*)src)[i];
                break;
        }
        return dst;
    }

    /// <summary>float32 to the model's dtype (bf16: to nearest, ties to even, as libtorch rounds).</summary>
    private static void Narrow(float* src, byte* dst, ScalarType dtype, int n)
    {
        switch (dtype)
        {
            case ScalarType.Float32:
                Buffer.MemoryCopy(src, dst, n * 4L, n * 4L);
                break;
            case ScalarType.BFloat16:
                for (int i = 0; i < n; i++)
                {
                    uint bits = BitConverter.SingleToUInt32Bits(src[i]);
                    ((ushort*)dst)[i] = (bits & 0x7fffffff) > 0x7f800000 ? (ushort)((bits >> 16) | 0x40) : (ushort)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
                }
                break;
            default:
                for (int i = 0; i < n; i++) ((Half*)dst)[i] = (Half)src[i];
                break;
        }
    }
}
