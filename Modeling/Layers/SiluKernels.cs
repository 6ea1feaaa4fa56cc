using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ShardPipe.Modeling.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// A gated MLP's <c>act_fn(gate) * up</c> for SiLU in one pass, each row with the values libtorch's two calls give that
/// row alone. libtorch's CPU SiLU (AVX-512 build) runs a vectorised loop two vectors at a time — 32 float32 or 64 bf16
/// elements — computing per lane <c>x / (1 + exp(−x))</c> with SLEEF's <c>expf</c> (1-ULP variant, fused multiply-adds),
/// and the elements past the last whole pass with the C library's <c>expf</c>; for bf16 each result is rounded to bf16;
/// the product is then the dtype's multiply (bf16: both widened, multiplied in float32, rounded). This class repeats
/// SLEEF's exp step for step (<see cref="Exp"/>), the scalar formula and the roundings, so that one row's output equals
/// libtorch's bit for bit: the tests compare every one of the 65,536 bf16 inputs, a million float32 ones (16 M while it
/// was built) and rows whose width leaves a scalar tail.
/// <para>Row by row: libtorch's loop runs over the whole tensor (and above 32,768 elements over each thread's share of
/// it), so where a row's width is not a whole number of passes, which of its elements took the scalar <c>expf</c> depended
/// on the rows beside it — the Qwen2 reference (intermediate 176) gave a verification pass's 5 rows logits up to 3.6e-7
/// away from the same positions decoded one at a time (session 23). Here each row is computed as that row alone, so a
/// row's bits do not depend on the step it is in (decode, verification, merged step, prefill), as the float32 products
/// do not (<see cref="Fp32Kernels.Fp32Rows"/>). Where every row is a whole number of passes (the Llama models' 2,048,
/// 11,008, 14,336, …) this is libtorch's output up to 32,768 elements, and above wherever libtorch's per-thread shares are
/// whole passes too (on two threads a 480 × 2,048 prefill's are); where a share ends inside a row (34 × 2,048 on three
/// threads or more), libtorch's bits for that row depended on the split, and here the row keeps its one-row values.</para>
/// <para>Why a kernel: in a decode step the two libtorch calls (SiLU, then the multiply) took 8–9 µs a layer of serial
/// time between the gate/up and down products — with the weights streaming through the caches, libtorch's dispatch runs
/// cold — and the fused pass 3–4 µs (100–111 against 40–51 µs a token of the 134M Llama in int4, BENCHMARKS.md, session
/// 17). Inputs of more than 32,768 elements (a prefill's) are cut into whole rows over <see cref="SpinPool"/>.</para>
/// </summary>
public static unsafe class SiluKernels
{
    /// <summary>Off: the libtorch calls always (benchmarks compare both in one process; default on).</summary>
    public static bool Enabled { get; set; } = true;

    /// <summary>Elements per pass of libtorch's vectorised loop: two vectors, of 16 float32 or 32 bf16.</summary>
    private const int Float32Pass = 32, Bf16Pass = 64;

    /// <summary>Inputs up to this many elements run on the calling thread (a decode step's); larger ones in whole rows on
    /// <see cref="SpinPool"/>, each part at least a quarter of this many elements (<see cref="SpinPool.PartsPerThread"/>
    /// parts a thread) or one row.</summary>
    private const int SerialElements = 32768;

    /// <summary>
    /// Whether <see cref="SiluMul"/> applies: AVX-512 (the SLEEF variant it repeats), gate and up of one shape (the last
    /// dimension a row) and dtype (float32 or bf16), contiguous, on the CPU.
    /// </summary>
    public static bool Applies(Tensor gate, Tensor up)
    {
        if (!Enabled || !Avx512F.IsSupported || gate.dtype is not (ScalarType.Float32 or ScalarType.BFloat16) || up.dtype != gate.dtype
            || gate.device_type != DeviceType.CPU || up.device_type != DeviceType.CPU || !gate.is_contiguous() || !up.is_contiguous() || gate.dim() < 1)
            return false;
        long n = gate.NumberOfElements;
        return AppliesTo(n) && up.NumberOfElements == n && gate.Shape().SequenceEqual(up.Shape());
    }

    /// <summary>The part of <see cref="Applies"/> that depends on the element count alone (contiguous float32 or bf16 gate and
    /// up of one shape on the CPU being known, as for the decode layer's own buffers).</summary>
    internal static bool AppliesTo(long n) => Enabled && Avx512F.IsSupported && n > 0 && n <= int.MaxValue;

    /// <summary><c>silu(gate) * up</c> in the dtype (see <see cref="Applies"/>): a new tensor of gate's shape.</summary>
    public static Tensor SiluMul(Tensor gate, Tensor up)
    {
        var y = empty(gate.Shape(), gate.dtype);
        int n = (int)gate.NumberOfElements, width = (int)gate.Shape()[^1];
        byte* g = (byte*)TensorMemory.Pointer(gate), u = (byte*)TensorMemory.Pointer(up), o = (byte*)TensorMemory.Pointer(y);
        Rows(gate.dtype == ScalarType.BFloat16, g, u, o, n / width, width);
        GC.KeepAlive(gate); // the inputs' memory is read through pointers: held until the pass is done
        GC.KeepAlive(up);
        return y;
    }

    /// <summary><paramref name="rows"/> rows of <paramref name="width"/> contiguous elements (float32, or bf16 where
    /// <paramref name="bf16"/>): y = silu(g) · u, each row as libtorch computes that row alone; on the calling thread up to
    /// <see cref="SerialElements"/>, in whole rows over <see cref="SpinPool"/> above.</summary>
    internal static void Rows(bool bf16, byte* g, byte* u, byte* y, int rows, int width)
    {
        long n = (long)rows * width;
        int parts = n <= SerialElements ? 1 : SpinPool.Shared.Parts(rows, Math.Max(1, SerialElements / SpinPool.PartsPerThread / Math.Max(1, width)));
        if (parts <= 1)
        {
            RowRange(bf16, g, u, y, 0, rows, width);
            return;
        }
        nint gp = (nint)g, up = (nint)u, yp = (nint)y;
        SpinPool.Shared.Run(parts, p => RowRange(bf16, (byte*)gp, (byte*)up, (byte*)yp, SpinPool.Bound(rows, p, parts), SpinPool.Bound(rows, p + 1, parts), width));
    }

    private static void RowRange(bool bf16, byte* g, byte* u, byte* y, int from, int to, int width)
    {
        int size = bf16 ? 2 : 4;
        for (int r = from; r < to; r++)
        {
            long at = (long)r * width * size;
            if (bf16) Bf16Row((ushort*)(g + at), (ushort*)(u + at), (ushort*)(y + at), width);
            else Float32Row((float*)(g + at), (float*)(u + at), (float*)(y + at), width);
        }
    }

    /// <summary>libtorch's float32 SiLU of 16 lanes: <c>x / (1 + exp(−x))</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Silu(Vector512<float> x) => x / (Vector512.Create(1f) + Exp(-x));

    /// <summary>libtorch's scalar SiLU (the elements past its vectorised loop): <c>x / (1 + expf(−x))</c> with the C
    /// library's <c>expf</c>, which .NET's <see cref="MathF.Exp"/> calls.</summary>
    private static float SiluScalar(float x) => x / (1f + MathF.Exp(-x));

    /// <summary>One float32 row: its whole 32-element passes vectorised, the rest scalar.</summary>
    private static void Float32Row(float* g, float* u, float* y, int width)
    {
        int vec = width / Float32Pass * Float32Pass, i = 0;
        for (; i < vec; i += 16)
            (Silu(Vector512.Load(g + i)) * Vector512.Load(u + i)).Store(y + i);
        for (; i < width; i++) y[i] = SiluScalar(g[i]) * u[i];
    }

    /// <summary>One bf16 row: its whole 64-element passes vectorised, the rest scalar; silu(gate) is a bf16 tensor, times
    /// up rounded again — each rounding libtorch's (vectorised or scalar).</summary>
    private static void Bf16Row(ushort* g, ushort* u, ushort* y, int width)
    {
        int vec = width / Bf16Pass * Bf16Pass, i = 0;
        for (; i < vec; i += 16)
        {
            var act = StepKernels.Widen16(StepKernels.Bf16Of16AsLibtorchVectors(Silu(StepKernels.Widen16(Vector256.Load(g + i)))));
            StepKernels.Bf16Of16AsLibtorchVectors(act * StepKernels.Widen16(Vector256.Load(u + i))).Store(y + i);
        }
        for (; i < width; i++)
        {
            float act = StepKernels.FromBf16(ScalarBf16(SiluScalar(StepKernels.FromBf16(g[i]))));
            y[i] = ScalarBf16(act * StepKernels.FromBf16(u[i]));
        }
    }

    /// <summary>c10's scalar float → bf16 (<c>round_to_nearest_even</c>): ties to even, every NaN 0x7FC0.</summary>
    private static ushort ScalarBf16(float f) => float.IsNaN(f) ? (ushort)0x7FC0 : StepKernels.ToBf16(f);

    /// <summary>
    /// SLEEF's single-precision exp, 1-ULP variant, as its AVX-512 build computes it: q = round-to-even(x·log₂e);
    /// s = x − q·ln2 in two fused steps (ln2's upper and lower parts); a degree-5 polynomial in s by fused
    /// multiply-adds; 1 + (s·s·p + s); times 2^q in two halves; 0 below −104, +∞ above 100.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Exp(Vector512<float> d)
    {
        var q = Avx512F.ConvertToVector512Int32(d * Vector512.Create(1.442695040888963407359924681001892137426645954152985934135449406931f)); // round to nearest even
        var qf = Avx512F.ConvertToVector512Single(q);
        var s = Vector512.FusedMultiplyAdd(qf, Vector512.Create(-0.693145751953125f), d);
        s = Vector512.FusedMultiplyAdd(qf, Vector512.Create(-1.428606765330187045e-06f), s);
        var u = Vector512.Create(0.000198527617612853646278381f);
        u = Vector512.FusedMultiplyAdd(u, s, Vector512.Create(0.00139304355252534151077271f));
        u = Vector512.FusedMultiplyAdd(u, s, Vector512.Create(0.00833336077630519866943359f));
        u = Vector512.FusedMultiplyAdd(u, s, Vector512.Create(0.0416664853692054748535156f));
        u = Vector512.FusedMultiplyAdd(u, s, Vector512.Create(0.166666671633720397949219f));
        u = Vector512.FusedMultiplyAdd(u, s, Vector512.Create(0.5f));
        u = Vector512.Create(1f) + Vector512.FusedMultiplyAdd(s * s, u, s);
        // ldexp in two halves: u · 2^(q>>1) · 2^(q − (q>>1))
        var half = q >> 1;
        u = u * Pow2(half) * Pow2(q - half);
        u = Vector512.ConditionalSelect(Vector512.LessThan(d, Vector512.Create(-104f)), Vector512<float>.Zero, u);
        return Vector512.ConditionalSelect(Vector512.GreaterThan(d, Vector512.Create(100f)), Vector512.Create(float.PositiveInfinity), u);
    }

    /// <summary>2^e as a float built from its exponent bits (e + 127 in bits 23–30), as SLEEF's pow2i.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Pow2(Vector512<int> e) => ((e + Vector512.Create(0x7f)) << 23).AsSingle();
}
