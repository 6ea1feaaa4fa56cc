using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ShardPipe.Modeling.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// A gated MLP's <c>act_fn(gate) * up</c> for SiLU in one pass over a decode step's few rows, with the values libtorch's
/// two calls give. libtorch's CPU SiLU (AVX-512 build, the vectorised loop) computes, per float32 lane,
/// <c>x / (1 + exp(−x))</c> with SLEEF's <c>expf</c> (1-ULP variant, fused multiply-adds), and for bf16 rounds that to
/// bf16; the product is then the dtype's multiply (bf16: both widened, multiplied in float32, rounded). This class
/// repeats SLEEF's exp step for step (<see cref="Exp"/>) and the rounding, so its output equals libtorch's bit for bit:
/// the tests compare every one of the 65,536 bf16 inputs and a million float32 ones (16 M while it was built).
/// <para>Why: in a decode step the two libtorch calls (SiLU, then the multiply) took 8–9 µs a layer of serial time between
/// the gate/up and down products — with the weights streaming through the caches, libtorch's dispatch runs cold — and
/// the fused pass 3–4 µs (100–111 against 40–51 µs a token of the 134M Llama in int4, BENCHMARKS.md, session 17).</para>
/// <para>Where libtorch would not take its vectorised path for every element, the kernel does not apply and the caller
/// keeps the libtorch calls: the scalar tail (elements past the last whole 64) uses the C library's <c>expf</c>, and above
/// 32,768 elements libtorch may cut the loop across threads, each part with its own tail. (A merged step of 16 rows of
/// 2,048 is 32,768: one loop.)</para>
/// </summary>
public static unsafe class SiluKernels
{
    /// <summary>Off: the libtorch calls always (benchmarks compare both in one process; default on).</summary>
    public static bool Enabled { get; set; } = true;

    /// <summary>Elements per pass of libtorch's vectorised loop for bf16 (two vectors of 32); float32's (two of 16) divides it.</summary>
    private const int LoopElements = 64;

    /// <summary>libtorch's grain size: above it an elementwise loop may be split across threads (at::parallel_for runs
    /// ranges up to the grain size as one call).</summary>
    private const int GrainElements = 32768;

    /// <summary>
    /// Whether <see cref="SiluMul"/> gives libtorch's values here: AVX-512 (the SLEEF variant it repeats), gate and up of
    /// one shape and dtype (float32 or bf16), contiguous, on the CPU, a whole number of vectorised passes and at most the
    /// grain size.
    /// </summary>
    public static bool Applies(Tensor gate, Tensor up)
    {
        if (!Enabled || !Avx512F.IsSupported || gate.dtype is not (ScalarType.Float32 or ScalarType.BFloat16) || up.dtype != gate.dtype
            || gate.device_type != DeviceType.CPU || up.device_type != DeviceType.CPU || !gate.is_contiguous() || !up.is_contiguous())
            return false;
        long n = gate.NumberOfElements;
        return AppliesTo(n) && up.NumberOfElements == n && gate.Shape().SequenceEqual(up.Shape());
    }

    /// <summary>The part of <see cref="Applies"/> that depends on the element count alone (contiguous float32 or bf16 gate and
    /// up of one shape on the CPU being known, as for the decode layer's own buffers).</summary>
    internal static bool AppliesTo(long n) => Enabled && Avx512F.IsSupported && n > 0 && n <= GrainElements && n % LoopElements == 0;

    /// <summary><c>silu(gate) * up</c> in the dtype (see <see cref="Applies"/>): a new tensor of gate's shape.</summary>
    public static Tensor SiluMul(Tensor gate, Tensor up)
    {
        var y = empty(gate.Shape(), gate.dtype);
        int n = (int)gate.NumberOfElements;
        byte* g = (byte*)TensorMemory.Pointer(gate), u = (byte*)TensorMemory.Pointer(up), o = (byte*)TensorMemory.Pointer(y);
        if (gate.dtype == ScalarType.BFloat16) Bf16((ushort*)g, (ushort*)u, (ushort*)o, n);
        else Float32((float*)g, (float*)u, (float*)o, n);
        GC.KeepAlive(gate); // the inputs' memory is read through pointers: held until the pass is done
        GC.KeepAlive(up);
        return y;
    }

    /// <summary>libtorch's float32 SiLU of 16 lanes: <c>x / (1 + exp(−x))</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Silu(Vector512<float> x) => x / (Vector512.Create(1f) + Exp(-x));

    internal static void Float32(float* g, float* u, float* y, int n)
    {
        for (int i = 0; i < n; i += 16)
            (Silu(Vector512.Load(g + i)) * Vector512.Load(u + i)).Store(y + i);
    }

    internal static void Bf16(ushort* g, ushort* u, ushort* y, int n)
    {
        for (int i = 0; i < n; i += 16)
        {
            // silu(gate) is a bf16 tensor; times up, rounded again — each rounding libtorch's vectorised one
            var act = StepKernels.Widen16(StepKernels.Bf16Of16AsLibtorchVectors(Silu(StepKernels.Widen16(Vector256.Load(g + i)))));
            StepKernels.Bf16Of16AsLibtorchVectors(act * StepKernels.Widen16(Vector256.Load(u + i))).Store(y + i);
        }
    }

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
