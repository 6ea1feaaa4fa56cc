using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ShardPipe.Modeling.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// The small row-wise work of a decode step outside the Linears, each in one vectorised pass over float32 or bf16 rows
/// instead of several libtorch calls (each a native call, an allocation and a pass over memory): RMSNorm fused with the
/// residual add before it, rotary embedding, the greedy argmax, and the bf16 widening and rounding the kernels share.
/// Each follows the op order of the libtorch form it replaces, so results round as libtorch's do: bf16 values are
/// widened exactly, computed in float32, and rounded to bf16 (to nearest, ties to even) wherever the libtorch form
/// produces a bf16 tensor. <c>Vector&lt;T&gt;</c> code: the machine's widest vectors the JIT uses (256 bits here), scalar
/// tails; the same code runs on any CPU.
/// </summary>
public static unsafe class StepKernels
{
    /// <summary>Rows at most (a decode step, a merged step, a verification segment) for which these kernels run; longer inputs go to libtorch.</summary>
    public const int MaxRows = 64;

    /// <summary>Scratch floats a kernel takes from the stack (16 KB); wider rows take an array.</summary>
    private const int StackFloats = 4096;

    /// <summary>Whether x is a float32 or bf16 CPU tensor of at most <see cref="MaxRows"/> rows of <paramref name="width"/> that these kernels take.</summary>
    public static bool Takes(Tensor x, long width)
    {
        if (x.dtype is not (ScalarType.Float32 or ScalarType.BFloat16) || x.device_type != DeviceType.CPU || !x.is_contiguous()) return false;
        var shape = x.Shape();
        long elements = shape.Aggregate(1L, (a, n) => a * n);
        return elements > 0 && shape[^1] == width && elements / width <= MaxRows;
    }

    /// <summary>
    /// Whether <see cref="AddRmsNorm"/> applies: x and the residual branch of one shape and dtype (float32 or bf16,
    /// contiguous, CPU, few rows), a weight of that dtype.
    /// </summary>
    public static bool AddRmsNormApplies(Tensor x, Tensor delta, Tensor weight) =>
        weight.dim() == 1 && Takes(x, weight.Shape()[0]) && delta.dtype == x.dtype && weight.dtype == x.dtype
        && delta.device_type == DeviceType.CPU && weight.device_type == DeviceType.CPU && delta.is_contiguous() && weight.is_contiguous()
        && delta.Shape().SequenceEqual(x.Shape());

    /// <summary>
    /// <c>sum = x + delta</c> (the residual add, rounded to the dtype) and Llama's RMSNorm of it in the same pass:
    /// in float32 <c>sum·rsqrt(mean(sum²) + eps)</c>, cast to the dtype, times the weight (in the dtype). Returns the
    /// normed rows; <paramref name="sum"/> gets the sum (same shape as x).
    /// </summary>
    public static Tensor AddRmsNorm(Tensor x, Tensor delta, Tensor weight, double eps, out Tensor sum)
    {
        int d = (int)weight.Shape()[0], rows = (int)(x.NumberOfElements / d);
        bool bf16 = x.dtype == ScalarType.BFloat16;
        var shape = x.Shape();
        sum = empty(shape, x.dtype);
        var normed = empty(shape, x.dtype);
        AddRmsNormRows((byte*)TensorMemory.Pointer(x), (byte*)TensorMemory.Pointer(delta), (byte*)TensorMemory.Pointer(weight),
            (byte*)TensorMemory.Pointer(sum), (byte*)TensorMemory.Pointer(normed), bf16, d, rows, eps);
        return normed;
    }

    /// <summary><see cref="AddRmsNorm"/> of <paramref name="rows"/> rows of <paramref name="d"/> at pointers (float32 or bf16
    /// throughout): <paramref name="sp"/> gets x + delta, <paramref name="np"/> its norm times the weight.</summary>
    internal static void AddRmsNormRows(byte* xp, byte* dp, byte* wp, byte* sp, byte* np, bool bf16, int d, int rows, double eps)
    {
        int es = bf16 ? 2 : 4;
        Span<float> scratch = 3 * d <= StackFloats ? stackalloc float[3 * d] : new float[3 * d];
        fixed (float* f = scratch)
        {
            float* a = f, b = f + d, w = f + 2 * d;
            Widen(wp, bf16, w, d);
            for (int r = 0; r < rows; r++)
            {
                long at = (long)r * d * es;
                Widen(xp + at, bf16, a, d);
                Widen(dp + at, bf16, b, d);
                Add(a, b, a, d);
                if (bf16) RoundBf16(a, d); // the sum is a bf16 tensor
                Narrow(a, sp + at, bf16, d);
                NormRow(a, w, np + at, bf16, d, eps);
            }
        }
    }

    /// <summary><c>x + delta</c> of <paramref name="n"/> elements at pointers, float32 or bf16 (each sum rounded to the
    /// dtype, as libtorch's add of two tensors of that dtype); <paramref name="y"/> may be x or delta.</summary>
    internal static void AddElements(byte* x, byte* delta, byte* y, bool bf16, int n)
    {
        if (!bf16)
        {
            Add((float*)x, (float*)delta, (float*)y, n);
            return;
        }
        const int Chunk = 1024;
        float* a = stackalloc float[Chunk], b = stackalloc float[Chunk];
        for (int at = 0; at < n; at += Chunk)
        {
            int len = Math.Min(Chunk, n - at);
            Widen(x + 2L * at, bf16: true, a, len);
            Widen(delta + 2L * at, bf16: true, b, len);
            Add(a, b, a, len);
            RoundBf16(a, len);
            Narrow(a, y + 2L * at, bf16: true, len);
        }
    }

    /// <summary>Llama's RMSNorm of rows (as <see cref="AddRmsNorm"/> without the add); x float32 or bf16, weight of its dtype.</summary>
    public static Tensor RmsNorm(Tensor x, Tensor weight, double eps)
    {
        int d = (int)weight.Shape()[0], rows = (int)(x.NumberOfElements / d);
        bool bf16 = x.dtype == ScalarType.BFloat16;
        var input = x.is_contiguous() ? x : x.contiguous();
        var normed = empty(x.Shape(), x.dtype);
        RmsNormRows((byte*)TensorMemory.Pointer(input), (byte*)TensorMemory.Pointer(weight), (byte*)TensorMemory.Pointer(normed), bf16, d, rows, eps);
        if (!ReferenceEquals(input, x)) input.Dispose();
        return normed;
    }

    /// <summary><see cref="RmsNorm"/> of <paramref name="rows"/> rows of <paramref name="d"/> at pointers (float32 or bf16 throughout).</summary>
    internal static void RmsNormRows(byte* xp, byte* wp, byte* np, bool bf16, int d, int rows, double eps)
    {
        int es = bf16 ? 2 : 4;
        Span<float> scratch = 2 * d <= StackFloats ? stackalloc float[2 * d] : new float[2 * d];
        fixed (float* f = scratch)
        {
            float* a = f, w = f + d;
            Widen(wp, bf16, w, d);
            for (int r = 0; r < rows; r++)
            {
                long at = (long)r * d * es;
                Widen(xp + at, bf16, a, d);
                NormRow(a, w, np + at, bf16, d, eps);
            }
        }
    }

    /// <summary>One row: <paramref name="h"/> (float32, overwritten) normed and times <paramref name="w"/>, written to <paramref name="dst"/> in the dtype.</summary>
    private static void NormRow(float* h, float* w, byte* dst, bool bf16, int d, double eps)
    {
        float scale = 1f / MathF.Sqrt(SumSquares(h, d) / d + (float)eps);
        Scale(h, scale, d);
        if (bf16) RoundBf16(h, d); // .to(input_dtype)
        Multiply(h, w, h, d);      // weight · h in the dtype: rounded once more by Narrow
        Narrow(h, dst, bf16, d);
    }

    /// <summary>
    /// Rotary embedding <c>x·cos + rotate_half(x)·sin</c> of x (B, H, T, D) with tables (B, T, D) broadcast over the
    /// heads, op for op as the libtorch form (each product rounded to the dtype, then the sum); output a new tensor.
    /// </summary>
    public static Tensor Rotary(Tensor x, Tensor cos, Tensor sin)
    {
        var shape = x.Shape();
        int b = (int)shape[0], h = (int)shape[1], t = (int)shape[2], d = (int)shape[3];
        var output = empty(shape, x.dtype);
        RotaryCore((byte*)TensorMemory.Pointer(x), null, (byte*)TensorMemory.Pointer(output), null, h, 0,
            (byte*)TensorMemory.Pointer(cos), (byte*)TensorMemory.Pointer(sin), b, t, d, x.dtype == ScalarType.BFloat16);
        return output;
    }

    /// <summary>
    /// Whether <see cref="RotaryPair"/> applies: a step's flat queries (N, heads·D) and keys (N, kv_heads·D), N at most
    /// <see cref="MaxRows"/>, tables (N, 1, D), all of one float32 or bf16 dtype, contiguous on CPU; D even.
    /// </summary>
    public static bool RotaryPairApplies(Tensor q, Tensor k, Tensor cos, Tensor sin, int headDim)
    {
        var dtype = q.dtype;
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16) || k.dtype != dtype || cos.dtype != dtype || sin.dtype != dtype
            || q.device_type != DeviceType.CPU || k.device_type != DeviceType.CPU || cos.device_type != DeviceType.CPU || sin.device_type != DeviceType.CPU
            || headDim <= 0 || headDim % 2 != 0) return false;
        long[] qs = q.Shape(), ks = k.Shape(), cs = cos.Shape(), ss = sin.Shape(); // each shape read is a native call: once each
        return qs.Length == 2 && ks.Length == 2 && cs.Length == 3 && ss.Length == 3 && qs[0] > 0 && qs[0] <= MaxRows
            && ks[0] == qs[0] && qs[1] > 0 && ks[1] > 0 && qs[1] % headDim == 0 && ks[1] % headDim == 0
            && cs[0] == qs[0] && cs[1] == 1 && cs[2] == headDim && ss[0] == qs[0] && ss[1] == 1 && ss[2] == headDim
            && q.is_contiguous() && k.is_contiguous() && cos.is_contiguous() && sin.is_contiguous();
    }

    /// <summary>
    /// Rotary embedding of a step's queries and keys together (each row's tables widened once for both), each as
    /// <see cref="Rotary"/> computes it on its (N, heads, 1, D) view; outputs of the inputs' flat shapes.
    /// </summary>
    public static (Tensor Q, Tensor K) RotaryPair(Tensor q, Tensor k, Tensor cos, Tensor sin, int headDim)
    {
        var qOut = empty(q.Shape(), q.dtype);
        var kOut = empty(k.Shape(), k.dtype);
        RotaryPairInto(q, k, (byte*)TensorMemory.Pointer(qOut), (byte*)TensorMemory.Pointer(kOut), cos, sin, headDim);
        return (qOut, kOut);
    }

    /// <summary><see cref="RotaryPair"/> written over its inputs (each row is read whole before it is written): the decode
    /// layer's path (<c>LlamaDecodeLayer</c>), whose q and k are its own fresh products.</summary>
    public static void RotaryPairInPlace(Tensor q, Tensor k, Tensor cos, Tensor sin, int headDim) =>
        RotaryPairInto(q, k, (byte*)TensorMemory.Pointer(q), (byte*)TensorMemory.Pointer(k), cos, sin, headDim);

    /// <summary><see cref="RotaryPair"/> into <paramref name="qOut"/> and <paramref name="kOut"/> (of q's and k's shapes and dtype; may be q and k).</summary>
    private static void RotaryPairInto(Tensor q, Tensor k, byte* qOut, byte* kOut, Tensor cos, Tensor sin, int headDim)
    {
        long[] qs = q.Shape(), ks = k.Shape();
        RotaryCore((byte*)TensorMemory.Pointer(q), (byte*)TensorMemory.Pointer(k), qOut, kOut, (int)(qs[1] / headDim), (int)(ks[1] / headDim),
            (byte*)TensorMemory.Pointer(cos), (byte*)TensorMemory.Pointer(sin), (int)qs[0], 1, headDim, q.dtype == ScalarType.BFloat16);
    }

    /// <summary>
    /// Rotary of x (B, H, T, D) into y and, when <paramref name="x2"/> is not null, of x2 (B, H2, T, D) into y2, with
    /// tables (B, T, D): each table row widened once for both.
    /// </summary>
    private static void RotaryCore(byte* xp, byte* x2, byte* yp, byte* y2, int h, int h2, byte* cp, byte* sp, int b, int t, int d, bool bf16)
    {
        int es = bf16 ? 2 : 4;
        Span<float> scratch = 5 * d <= StackFloats ? stackalloc float[5 * d] : new float[5 * d];
        fixed (float* f = scratch)
        {
            float* c = f, s = f + d, work = f + 2 * d;
            for (int bi = 0; bi < b; bi++)
                for (int ti = 0; ti < t; ti++)
                {
                    long table = ((long)bi * t + ti) * d * es;
                    Widen(cp + table, bf16, c, d);
                    Widen(sp + table, bf16, s, d);
                    for (int hi = 0; hi < h; hi++)
                    {
                        long row = (((long)bi * h + hi) * t + ti) * d * es;
                        RotaryRow(xp + row, yp + row, c, s, work, d, bf16);
                    }
                    if (x2 is null) continue;
                    for (int hi = 0; hi < h2; hi++)
                    {
                        long row = (((long)bi * h2 + hi) * t + ti) * d * es;
                        RotaryRow(x2 + row, y2 + row, c, s, work, d, bf16);
                    }
                }
        }
    }

    /// <summary>One row: <c>x·cos + rotate_half(x)·sin</c>, each product rounded to the dtype, then the sum; scratch of 3·d floats.</summary>
    private static void RotaryRow(byte* x, byte* y, float* c, float* s, float* scratch, int d, bool bf16)
    {
        int half = d / 2;
        float* xf = scratch, rot = scratch + d, acc = scratch + 2 * d;
        Widen(x, bf16, xf, d);
        for (int i = 0; i < half; i++)
        {
            rot[i] = -xf[i + half];
            rot[i + half] = xf[i];
        }
        Multiply(xf, c, acc, d);
        Multiply(rot, s, rot, d);
        if (bf16)
        {
            RoundBf16(acc, d);
            RoundBf16(rot, d);
        }
        Add(acc, rot, acc, d);
        Narrow(acc, y, bf16, d);
    }

    /// <summary>
    /// The index of the largest value of each row of float32 logits (B, V), as <c>argmax(-1)</c>: the first of equal
    /// maxima; a row holding NaN gives its first NaN's index (libtorch treats NaN as the largest).
    /// </summary>
    public static long[] Argmax(Tensor logits)
    {
        if (logits.dtype != ScalarType.Float32 || logits.dim() != 2 || logits.device_type != DeviceType.CPU || logits.Shape()[1] == 0)
            return logits.argmax(-1).data<long>().ToArray();
        var dense = logits.is_contiguous() ? logits : logits.contiguous();
        int rows = (int)dense.Shape()[0], v = (int)dense.Shape()[1];
        var result = new long[rows];
        float* p = (float*)TensorMemory.Pointer(dense);
        for (int r = 0; r < rows; r++) result[r] = ArgmaxRow(p + (long)r * v, v);
        if (!ReferenceEquals(dense, logits)) dense.Dispose();
        return result;
    }

    /// <summary>One row's argmax: a vector pass for the maximum (and whether any NaN), then the first index holding it.</summary>
    internal static int ArgmaxRow(float* p, int n)
    {
        int i = 0, w = Vector<float>.Count;
        float max = float.NegativeInfinity;
        bool nan = false;
        if (n >= w)
        {
            var m = new Vector<float>(float.NegativeInfinity);
            var ok = Vector<int>.AllBitsSet;
            for (; i <= n - w; i += w)
            {
                var x = Unsafe.ReadUnaligned<Vector<float>>(p + i);
                ok &= Vector.Equals(x, x);
                m = Vector.Max(m, x);
            }
            nan = ok != Vector<int>.AllBitsSet;
            for (int j = 0; j < w; j++) max = Math.Max(max, m[j]);
        }
        for (; i < n; i++)
        {
            if (float.IsNaN(p[i])) nan = true;
            else if (p[i] > max) max = p[i];
        }
        // The first index holding it, a vector of lanes at a time (a NaN is the only value unequal to itself).
        int k = 0;
        if (n >= w)
        {
            var mv = new Vector<float>(max);
            for (; k <= n - w; k += w)
            {
                var x = Unsafe.ReadUnaligned<Vector<float>>(p + k);
                var hit = nan ? Vector.OnesComplement(Vector.Equals(x, x)) : Vector.Equals(x, mv);
                if (hit != Vector<int>.Zero) break;
            }
        }
        for (; k < n; k++)
            if (nan ? float.IsNaN(p[k]) : p[k] == max) return k;
        return 0; // every value −∞: libtorch answers index 0 too
    }

    // ---- float32 rows: the pieces the kernels above are made of ----

    /// <summary>n values of float32 or bf16 at <paramref name="src"/> into float32 <paramref name="dst"/> (bf16 widens exactly).</summary>
    public static void Widen(byte* src, bool bf16, float* dst, int n)
    {
        if (!bf16)
        {
            Buffer.MemoryCopy(src, dst, n * 4L, n * 4L);
            return;
        }
        var s = (ushort*)src;
        int i = 0, w = Vector<ushort>.Count;
        for (; i <= n - w; i += w)
        {
            Vector.Widen(Unsafe.ReadUnaligned<Vector<ushort>>(s + i), out var lo, out var hi);
            Unsafe.WriteUnaligned(dst + i, Vector.AsVectorSingle(lo << 16));
            Unsafe.WriteUnaligned(dst + i + w / 2, Vector.AsVectorSingle(hi << 16));
        }
        for (; i < n; i++) dst[i] = FromBf16(s[i]);
    }

    /// <summary>float32 <paramref name="src"/> into <paramref name="dst"/> as float32, or rounded to bf16 (to nearest, ties to even; NaN stays NaN).</summary>
    public static void Narrow(float* src, byte* dst, bool bf16, int n)
    {
        if (!bf16)
        {
            Buffer.MemoryCopy(src, dst, n * 4L, n * 4L);
            return;
        }
        var o = (ushort*)dst;
        int i = 0, w = Vector<uint>.Count;
        for (; i <= n - 2 * w; i += 2 * w)
        {
            var lo = Bf16Bits(Unsafe.ReadUnaligned<Vector<float>>(src + i)) >> 16;
            var hi = Bf16Bits(Unsafe.ReadUnaligned<Vector<float>>(src + i + w)) >> 16;
            Unsafe.WriteUnaligned(o + i, Vector.Narrow(lo, hi));
        }
        for (; i < n; i++) o[i] = ToBf16(src[i]);
    }

    /// <summary>Each value rounded to bf16 and widened back (what a bf16 tensor holds), in place.</summary>
    public static void RoundBf16(float* v, int n)
    {
        int i = 0, w = Vector<float>.Count;
        for (; i <= n - w; i += w)
            Unsafe.WriteUnaligned(v + i, Vector.AsVectorSingle(Bf16Bits(Unsafe.ReadUnaligned<Vector<float>>(v + i))));
        for (; i < n; i++) v[i] = FromBf16(ToBf16(v[i]));
    }

    /// <summary>16 floats rounded to bf16 (to nearest, ties to even; NaN stays NaN, quieted), AVX-512: what
    /// <see cref="Narrow"/> and <see cref="ToBf16"/> give, for kernels that produce bf16 16 lanes at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<ushort> Bf16Of16(Vector512<float> f) => Bf16Of16(f, (f.AsUInt32() >>> 16) | Vector512.Create(0x40u));

    /// <summary>16 floats rounded to bf16 as libtorch's vectorised conversion rounds them (its AVX-512 elementwise
    /// kernels): to nearest, ties to even, and every NaN 0xFFFF (<see cref="Bf16Of16(Vector512{float})"/> keeps the NaN's
    /// sign and payload instead, as libtorch's scalar conversion does).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<ushort> Bf16Of16AsLibtorchVectors(Vector512<float> f) => Bf16Of16(f, Vector512.Create(0xffffu));

    /// <summary>The one rounding of the two above: to nearest, ties to even; NaN lanes take <paramref name="nanBits"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<ushort> Bf16Of16(Vector512<float> f, Vector512<uint> nanBits)
    {
        var v = f.AsUInt32();
        var rounded = (v + Vector512.Create(0x7fffu) + ((v >>> 16) & Vector512.Create(1u))) >>> 16;
        var nan = Vector512.GreaterThan(v & Vector512.Create(0x7fffffffu), Vector512.Create(0x7f800000u));
        return Avx512F.ConvertToVector256UInt16(Vector512.ConditionalSelect(nan, nanBits, rounded));
    }

    /// <summary>16 bf16 values widened exactly to float32 (their bits in the high half), AVX-512.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Widen16(Vector256<ushort> v) => (Avx512F.ConvertToVector512UInt32(v) << 16).AsSingle();

    /// <summary>The bf16 rounding of each lane, as the high half of a float32's bits (low half zero).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<uint> Bf16Bits(Vector<float> x)
    {
        var bits = Vector.AsVectorUInt32(x);
        var rounded = (bits + new Vector<uint>(0x7fff) + ((bits >> 16) & Vector<uint>.One)) & new Vector<uint>(0xffff0000);
        var quiet = (bits | new Vector<uint>(0x400000)) & new Vector<uint>(0xffff0000);
        return Vector.ConditionalSelect(Vector.AsVectorUInt32(Vector.Equals(x, x)), rounded, quiet);
    }

    /// <summary>A bf16 value as float32 (exact: its bits are the float's upper half).</summary>
    internal static float FromBf16(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>Rounds a float32 to bf16, to nearest with ties to even (as libtorch does); NaN stays NaN.</summary>
    internal static ushort ToBf16(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if ((bits & 0x7fffffff) > 0x7f800000) return (ushort)((bits >> 16) | 0x40); // quiet NaN
        return (ushort)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
    }

    private static void Add(float* a, float* b, float* y, int n)
    {
        int i = 0, w = Vector<float>.Count;
        for (; i <= n - w; i += w)
            Unsafe.WriteUnaligned(y + i, Unsafe.ReadUnaligned<Vector<float>>(a + i) + Unsafe.ReadUnaligned<Vector<float>>(b + i));
        for (; i < n; i++) y[i] = a[i] + b[i];
    }

    private static void Multiply(float* a, float* b, float* y, int n)
    {
        int i = 0, w = Vector<float>.Count;
        for (; i <= n - w; i += w)
            Unsafe.WriteUnaligned(y + i, Unsafe.ReadUnaligned<Vector<float>>(a + i) * Unsafe.ReadUnaligned<Vector<float>>(b + i));
        for (; i < n; i++) y[i] = a[i] * b[i];
    }

    private static void Scale(float* a, float s, int n)
    {
        int i = 0, w = Vector<float>.Count;
        var sv = new Vector<float>(s);
        for (; i <= n - w; i += w) Unsafe.WriteUnaligned(a + i, Unsafe.ReadUnaligned<Vector<float>>(a + i) * sv);
        for (; i < n; i++) a[i] *= s;
    }

    /// <summary>Σ a², accumulated in float32 lanes (as libtorch's vectorised reduction), then across them in double.</summary>
    private static float SumSquares(float* a, int n)
    {
        int i = 0, w = Vector<float>.Count;
        var acc = Vector<float>.Zero;
        for (; i <= n - w; i += w)
        {
            var x = Unsafe.ReadUnaligned<Vector<float>>(a + i);
            acc += x * x;
        }
        double s = 0;
        for (int j = 0; j < w; j++) s += acc[j];
        for (; i < n; i++) s += (double)a[i] * a[i];
        return (float)s;
    }
}
