using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ShardPipe.Modeling.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// <c>F.linear</c> with a packed int4/int8 weight (<see cref="PackedWeight"/>), for decode (one row) and prefill or
/// merged steps (many rows), on the decode kernels' <see cref="SpinPool"/>. Codes are widened to float32 in registers and
/// never written out as floats. Per group the kernel accumulates Σ code·x, then adds scale·(that − zero·Σx), which is
/// Σ scale·(code − zero)·x regrouped: float32 accumulation throughout. With AVX-512 a 16-byte load gives 32 int4 or
/// 16 int8 codes; the input is gathered once per call into the codes' order (act-order permutation, and for int4 the
/// low nibbles' even and high nibbles' odd columns), so the inner loop is load, mask/shift, widen, convert, FMA.
/// </summary>
public static unsafe class QuantKernels
{
    /// <summary>Rows of the input that share one decoding of a weight block.</summary>
    private const int RowTile = 4;
    private const int PrefetchAhead = 1024; // bytes ahead within the packed rows

    public static Tensor Linear(Tensor x, PackedWeight w, Tensor? bias)
    {
        int k = w.In, n = w.Out;
        if (x.shape[^1] != k) throw new ShapeMismatchException($"quantized linear expects {k} input features, got {x.shape[^1]}");
        long mLong = x.NumberOfElements / k;
        bool direct = x.dtype == ScalarType.Float32 && x.is_contiguous();
        var xf = direct ? x : x.to(ScalarType.Float32).contiguous();
        var y = empty(new[] { mLong, (long)n }, ScalarType.Float32);
        int m = (int)mLong;
        bool simd = Simd(w);
        int kp = w.WordsPerRow * w.CodesPerWord, groups = w.Groups;
        var xs = ArrayPool<float>.Shared.Rent(Math.Max(1, m * kp));
        var sums = ArrayPool<float>.Shared.Rent(Math.Max(1, m * groups));
        try
        {
            var xp = (float*)PackedWeight.Pointer(xf);
            var gather = w.Gather;
            for (int r = 0; r < m; r++)
            {
                float* src = xp + (long)r * k;
                for (int j = 0; j < kp; j++) xs[r * kp + Order(j, simd && w.Bits == 4)] = gather[j] < 0 ? 0f : src[gather[j]];
                for (int g = 0; g < groups; g++)
                {
                    float s = 0;
                    int end = Math.Min(k, (g + 1) * w.GroupSize);
                    for (int j = g * w.GroupSize; j < end; j++) s += src[gather[j]];
                    sums[r * groups + g] = s;
                }
            }
            var codes = (byte*)PackedWeight.Pointer(w.Codes);
            var scales = (float*)PackedWeight.Pointer(w.Scales);
            float* zeros = w.Zeros is null ? null : (float*)PackedWeight.Pointer(w.Zeros);
            var yp = (float*)PackedWeight.Pointer(y);
            fixed (float* xq0 = xs, sq0 = sums)
            {
                float* xq = xq0, sq = sq0;
                var job = new Job(w, codes, scales, zeros, xq, sq, yp, m, kp, simd);
                int parts = Math.Clamp(n / 32, 1, Math.Max(1, Math.Min(get_num_threads(), SpinPool.Shared.Helpers + 1)));
                SpinPool.Shared.Run(parts, p => job.Rows((int)((long)n * p / parts), (int)((long)n * (p + 1) / parts)));
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(xs);
            ArrayPool<float>.Shared.Return(sums);
            if (!direct) xf.Dispose();
        }
        if (bias is not null) y.add_(bias.to(ScalarType.Float32));
        var shaped = y.view(x.shape[..^1].Append(n).ToArray());
        if (x.dtype == ScalarType.Float32) return shaped;
        using (y) using (shaped) return shaped.to(x.dtype);
    }

    /// <summary>Whether the AVX-512 path applies: whole 16-byte blocks per group.</summary>
    internal static bool Simd(PackedWeight w)
    {
        int block = w.Bits == 4 ? 32 : 16;
        return Avx512F.IsSupported && w.GroupSize % block == 0 && w.In % block == 0;
    }

    /// <summary>Where packed column j's input goes in the gathered row: for the int4 SIMD path each 32 columns become
    /// their 16 even ones (low nibbles of 16 bytes) then their 16 odd ones (high nibbles).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Order(int j, bool deinterleave) => deinterleave ? (j & ~31) | ((j & 1) << 4) | ((j & 31) >> 1) : j;

    private sealed class Job
    {
        private readonly PackedWeight _w;
        private readonly byte* _codes;
        private readonly float* _scales, _zeros, _x, _sums, _y;
        private readonly int _m, _kp;
        private readonly bool _simd;

        public Job(PackedWeight w, byte* codes, float* scales, float* zeros, float* x, float* sums, float* y, int m, int kp, bool simd)
        {
            _w = w; _codes = codes; _scales = scales; _zeros = zeros; _x = x; _sums = sums; _y = y; _m = m; _kp = kp; _simd = simd;
        }

        public void Rows(int from, int to)
        {
            int groups = _w.Groups, n = _w.Out, rowBytes = _w.WordsPerRow * 4;
            float mid = _w.MidZero;
            float* d = stackalloc float[RowTile];
            for (int o = from; o < to; o++)
            {
                byte* row = _codes + (long)o * rowBytes;
                float* s = _scales + (long)o * groups;
                float* z = _zeros is null ? null : _zeros + (long)o * groups;
                for (int r0 = 0; r0 < _m; r0 += RowTile)
                {
                    int rn = Math.Min(RowTile, _m - r0);
                    if (_simd && _w.Bits == 4) Int4Simd(row, s, rn, r0, d);
                    else if (_simd) Int8Simd(row, s, rn, r0, d);
                    else Scalar(row, s, z, rn, r0, d);
                    for (int t = 0; t < rn; t++)
                    {
                        float* sums = _sums + (long)(r0 + t) * groups;
                        float zterm = 0;
                        if (_simd)
                            for (int g = 0; g < groups; g++) zterm += s[g] * (z is null ? mid : z[g]) * sums[g];
                        _y[(long)(r0 + t) * n + o] = d[t] - zterm;
                    }
                }
            }
        }

        /// <summary>Σ_g scale_g · Σ_{j∈g} code_j · x_j for rn rows; the zero term is added by the caller.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Int4Simd(byte* row, float* s, int rn, int r0, float* d)
        {
            int gs = _w.GroupSize, groups = _w.Groups;
            float* x0 = _x + (long)r0 * _kp, x1 = x0 + _kp, x2 = x1 + _kp, x3 = x2 + _kp;
            var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            var mask = Vector128.Create((byte)0x0F);
            for (int g = 0; g < groups; g++)
            {
                var d0 = Vector512<float>.Zero; var d1 = d0; var d2 = d0; var d3 = d0;
                int end = Math.Min(_w.In, (g + 1) * gs);
                for (int j = g * gs; j < end; j += 32)
                {
                    byte* p = row + j / 2;
                    Sse.Prefetch0(p + PrefetchAhead);
                    var b = Vector128.Load(p);
                    var lo = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(b & mask));
                    var hi = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.ShiftRightLogical(b.AsUInt16(), 4).AsByte() & mask));
                    d0 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x0 + j + 16), Vector512.FusedMultiplyAdd(lo, Vector512.Load(x0 + j), d0));
                    if (rn > 1)
                    {
                        d1 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x1 + j + 16), Vector512.FusedMultiplyAdd(lo, Vector512.Load(x1 + j), d1));
                        if (rn > 2)
                        {
                            d2 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x2 + j + 16), Vector512.FusedMultiplyAdd(lo, Vector512.Load(x2 + j), d2));
                            if (rn > 3) d3 = Vector512.FusedMultiplyAdd(hi, Vector512.Load(x3 + j + 16), Vector512.FusedMultiplyAdd(lo, Vector512.Load(x3 + j), d3));
                        }
                    }
                }
                var sg = Vector512.Create(s[g]);
                a0 = Vector512.FusedMultiplyAdd(sg, d0, a0);
                a1 = Vector512.FusedMultiplyAdd(sg, d1, a1);
                a2 = Vector512.FusedMultiplyAdd(sg, d2, a2);
                a3 = Vector512.FusedMultiplyAdd(sg, d3, a3);
            }
            d[0] = Vector512.Sum(a0); d[1] = Vector512.Sum(a1); d[2] = Vector512.Sum(a2); d[3] = Vector512.Sum(a3);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Int8Simd(byte* row, float* s, int rn, int r0, float* d)
        {
            int gs = _w.GroupSize, groups = _w.Groups;
            float* x0 = _x + (long)r0 * _kp, x1 = x0 + _kp, x2 = x1 + _kp, x3 = x2 + _kp;
            var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            for (int g = 0; g < groups; g++)
            {
                var d0 = Vector512<float>.Zero; var d1 = d0; var d2 = d0; var d3 = d0;
                int end = Math.Min(_w.In, (g + 1) * gs);
                for (int j = g * gs; j < end; j += 16)
                {
                    byte* p = row + j;
                    Sse.Prefetch0(p + PrefetchAhead);
                    var c = Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p)));
                    d0 = Vector512.FusedMultiplyAdd(c, Vector512.Load(x0 + j), d0);
                    if (rn > 1)
                    {
                        d1 = Vector512.FusedMultiplyAdd(c, Vector512.Load(x1 + j), d1);
                        if (rn > 2)
                        {
                            d2 = Vector512.FusedMultiplyAdd(c, Vector512.Load(x2 + j), d2);
                            if (rn > 3) d3 = Vector512.FusedMultiplyAdd(c, Vector512.Load(x3 + j), d3);
                        }
                    }
                }
                var sg = Vector512.Create(s[g]);
                a0 = Vector512.FusedMultiplyAdd(sg, d0, a0);
                a1 = Vector512.FusedMultiplyAdd(sg, d1, a1);
                a2 = Vector512.FusedMultiplyAdd(sg, d2, a2);
                a3 = Vector512.FusedMultiplyAdd(sg, d3, a3);
            }
            d[0] = Vector512.Sum(a0); d[1] = Vector512.Sum(a1); d[2] = Vector512.Sum(a2); d[3] = Vector512.Sum(a3);
        }

        /// <summary>The portable path (any group size, any machine): scale·(code − zero)·x summed per group, zero term included.</summary>
        private void Scalar(byte* row, float* s, float* z, int rn, int r0, float* d)
        {
            int gs = _w.GroupSize, groups = _w.Groups, k = _w.In, bits = _w.Bits, pf = 32 / bits;
            uint mask = (1u << bits) - 1;
            uint* words = (uint*)row;
            float mid = _w.MidZero;
            for (int t = 0; t < rn; t++)
            {
                float* x = _x + (long)(r0 + t) * _kp;
                float acc = 0;
                for (int g = 0; g < groups; g++)
                {
                    float zero = z is null ? mid : z[g], dot = 0;
                    int end = Math.Min(k, (g + 1) * gs);
                    for (int j = g * gs; j < end; j++)
                        dot += (((words[j / pf] >> (j % pf * bits)) & mask) - zero) * x[j];
                    acc += s[g] * dot;
                }
                d[t] = acc;
            }
        }
    }
}
