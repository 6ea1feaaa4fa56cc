using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Models;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// The fused <c>silu(gate) * up</c> of a decode step's gated MLP gives libtorch's bits: every bf16 input, a million
/// float32 ones (SLEEF's exp repeated step for step), and the MLP's output with the kernel on and off.
/// </summary>
public class SiluKernelTests
{
    // The tensor is held until its bytes are copied: a temporary whose last use is reading its span could otherwise be
    // finalized, and its memory freed, mid-copy (a run of the full suite read garbage for 32 values that way).
    private static ushort[] Bits16(Tensor t)
    {
        var bits = MemoryMarshal.Cast<byte, ushort>(t.bytes).ToArray();
        GC.KeepAlive(t);
        return bits;
    }

    private static uint[] Bits32(Tensor t)
    {
        var bits = MemoryMarshal.Cast<byte, uint>(t.bytes).ToArray();
        GC.KeepAlive(t);
        return bits;
    }

    /// <summary>libtorch's two calls, as the MLP made them before the kernel.</summary>
    private static Tensor Libtorch(Tensor gate, Tensor up) => nn.functional.silu(gate) * up;

    [Fact]
    public void Every_bf16_input_gives_libtorchs_bits()
    {
        Assert.True(Avx512F.IsSupported, "this machine's CPU has AVX-512 (the kernel's condition); the fallback is tested below");
        using var all = empty(65536, ScalarType.BFloat16);
        var span = MemoryMarshal.Cast<byte, ushort>(all.bytes);
        for (int i = 0; i < span.Length; i++) span[i] = (ushort)i; // every pattern: zeros, subnormals, ±∞, NaNs
        manual_seed(17);
        int silu = 0, product = 0;
        for (int part = 0; part < 2; part++) // 16 rows of 2,048: a merged step's, the most the kernel takes
        {
            using var gate = all.narrow(0, part * 32768, 32768).reshape(16, 2048).contiguous();
            using var ones = ones_like(gate);
            using var up = randn(16, 2048).to(ScalarType.BFloat16);
            Assert.True(SiluKernels.Applies(gate, up));
            silu += Bits16(SiluKernels.SiluMul(gate, ones)).Zip(Bits16(Libtorch(gate, ones))).Count(p => p.First != p.Second);
            product += Bits16(SiluKernels.SiluMul(gate, up)).Zip(Bits16(Libtorch(gate, up))).Count(p => p.First != p.Second);
        }
        Assert.Equal(0, silu);
        Assert.Equal(0, product);
    }

    [Fact]
    public void Float32_inputs_across_the_range_give_libtorchs_bits()
    {
        Assert.True(Avx512F.IsSupported);
        manual_seed(5);
        var special = new float[] { 0f, -0f, float.PositiveInfinity, float.NegativeInfinity, float.NaN, -104f, -104.00001f, -103.99999f,
            100f, 100.00001f, 99.99999f, 88.7f, -88.7f, 1e-30f, -1e-30f, float.Epsilon, -float.Epsilon, 1e-45f, 0.5f, -0.5f };
        int mismatches = 0;
        var examples = new List<string>();
        for (int round = 0; round < 64; round++)
        {
            using var gate = round == 0
                ? tensor(Enumerable.Range(0, 16384).Select(i => special[i % special.Length]).ToArray()).reshape(8, 2048)
                : (round % 3) switch { 0 => randn(8, 2048) * 10, 1 => rand(8, 2048) * 220 - 110, _ => randn(8, 2048) * 0.01 };
            using var up = randn(8, 2048);
            var mine = Bits32(SiluKernels.SiluMul(gate, up));
            var theirs = Bits32(Libtorch(gate, up));
            var g = Bits32(gate);
            var u = Bits32(up);
            for (int i = 0; i < mine.Length; i++)
            {
                bool bothNaN = float.IsNaN(BitConverter.UInt32BitsToSingle(mine[i])) && float.IsNaN(BitConverter.UInt32BitsToSingle(theirs[i]));
                if (mine[i] == theirs[i] || bothNaN) continue;
                if (mismatches++ < 4)
                    examples.Add($"round {round} gate {BitConverter.UInt32BitsToSingle(g[i]):R} up {BitConverter.UInt32BitsToSingle(u[i]):R}: " +
                                 $"{BitConverter.UInt32BitsToSingle(mine[i]):R} against libtorch's {BitConverter.UInt32BitsToSingle(theirs[i]):R}");
            }
        }
        Assert.True(mismatches == 0, $"{mismatches} values differ, e.g. " + string.Join("; ", examples));
    }

    [Fact]
    public void It_takes_contiguous_float32_and_bf16_of_one_shape_and_leaves_the_rest_to_libtorch()
    {
        var g = randn(1, 2048).to(ScalarType.BFloat16);
        Assert.Equal(Avx512F.IsSupported, SiluKernels.Applies(g, randn(1, 2048).to(ScalarType.BFloat16)));
        Assert.Equal(Avx512F.IsSupported, SiluKernels.Applies(randn(1, 100), randn(1, 100)));       // a row with a scalar tail
        Assert.Equal(Avx512F.IsSupported, SiluKernels.Applies(randn(17, 2048), randn(17, 2048)));   // more than one thread's share
        Assert.False(SiluKernels.Applies(g, randn(1, 2048)));                                       // dtypes differ
        Assert.False(SiluKernels.Applies(randn(2048, 2).t(), randn(2, 2048)));                      // not contiguous
        Assert.False(SiluKernels.Applies(randn(2, 100), randn(1, 200)));                            // shapes differ
        Assert.False(SiluKernels.Applies(randn(1, 2048).to(ScalarType.Float16), randn(1, 2048).to(ScalarType.Float16)));
        // Activations.Gated: the kernel where it applies, otherwise the two calls — with libtorch's values for one row.
        var x = randn(1, 100);
        var u = randn(1, 100);
        Assert.True(Activations.Gated("silu", Activations.Get("silu"), x, u).eq(Libtorch(x, u)).all().item<bool>());
        var half = x.to(ScalarType.Float16);
        Assert.True(Activations.Gated("silu", Activations.Get("silu"), half, u.to(ScalarType.Float16)).eq(Libtorch(half, u.to(ScalarType.Float16))).all().item<bool>());
        var gelu = Activations.Gated("gelu", Activations.Get("gelu"), x, u);
        Assert.True(gelu.eq(nn.functional.gelu(x) * u).all().item<bool>());
    }

    /// <summary>
    /// A row of any width gets libtorch's bits for that row alone: its whole passes (32 float32, 64 bf16 elements)
    /// vectorised, the rest through the C library's <c>expf</c> — widths below one pass, with a tail, and whole.
    /// </summary>
    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void One_row_of_any_width_gives_libtorchs_bits(ScalarType dtype)
    {
        Assert.True(Avx512F.IsSupported);
        manual_seed(23);
        foreach (int width in new[] { 1, 7, 16, 40, 100, 176, 2048, 2064, 2111 })
        {
            using var gate = (randn(1, width) * 6).to(dtype);
            using var up = randn(1, width).to(dtype);
            Assert.True(SiluKernels.Applies(gate, up));
            var mine = Bits32(SiluKernels.SiluMul(gate, up).to(ScalarType.Float32));
            var theirs = Bits32(Libtorch(gate, up).to(ScalarType.Float32));
            int differ = mine.Zip(theirs).Count(p => p.First != p.Second);
            Assert.True(differ == 0, $"{dtype}, width {width}: {differ} of {width} values differ from libtorch's");
        }
    }

    /// <summary>
    /// Rows shorter than one of libtorch's passes are scalar throughout (the C library's <c>expf</c>, c10's scalar bf16
    /// rounding): 64 rows of 31 float32 or 63 bf16 inputs, special values among them (±∞, NaN, subnormals, the exp's
    /// bounds), each row against libtorch's bits for that row alone.
    /// </summary>
    [Theory]
    [InlineData(ScalarType.Float32, 31)]
    [InlineData(ScalarType.BFloat16, 63)]
    public void Rows_shorter_than_a_pass_take_libtorchs_scalar_values(ScalarType dtype, int width)
    {
        Assert.True(Avx512F.IsSupported);
        manual_seed(37);
        const int rows = 64;
        var special = new float[] { 0f, -0f, float.PositiveInfinity, float.NegativeInfinity, float.NaN, -104f, -103.99999f, 100f, 99.99999f,
            88.7f, -88.7f, 1e-30f, -1e-30f, float.Epsilon, -float.Epsilon, 0.5f, -0.5f, 20f, -20f, 3e-39f };
        var values = (randn(rows, width) * 20).data<float>().ToArray();
        for (int i = 0; i < values.Length; i += 3) values[i] = special[(i / 3) % special.Length];
        using var gate = tensor(values).reshape(rows, width).to(dtype);
        using var up = randn(rows, width).to(dtype);
        using var all = SiluKernels.SiluMul(gate, up);
        // A NaN is a NaN: its bits are not compared (libtorch's bf16 multiply runs a loop of its own, 32 elements a pass
        // with AVX2 here, and writes a vector NaN as 0xFFFF, a scalar one as 0x7FC0).
        int differ = DifferFromRowsAlone(gate, up, all, nanIsNaN: true);
        Assert.True(differ == 0, $"{dtype}, width {width}: {differ} of {rows * width} values differ from libtorch's for the row alone");
    }

    /// <summary>
    /// Each row of a step is computed as that row alone, whatever the rows beside it: 5 rows of 176 (where libtorch's
    /// scalar tail falls on other elements for 5 rows than for one), and 40 rows of 2,111 (more than 32,768 elements: cut
    /// into whole rows over the spin pool; libtorch cuts such a loop across its threads, each share with its own tail).
    /// </summary>
    [Theory]
    [InlineData(ScalarType.Float32, 5, 176)]
    [InlineData(ScalarType.BFloat16, 5, 176)]
    [InlineData(ScalarType.Float32, 40, 2111)]
    [InlineData(ScalarType.BFloat16, 40, 2111)]
    public void A_row_has_the_same_bits_in_any_number_of_rows(ScalarType dtype, int rows, int width)
    {
        Assert.True(Avx512F.IsSupported);
        manual_seed(31);
        using var gate = (randn(rows, width) * 6).to(dtype);
        using var up = randn(rows, width).to(dtype);
        using var all = SiluKernels.SiluMul(gate, up);
        int differ = DifferFromRowsAlone(gate, up, all, nanIsNaN: false);
        Assert.True(differ == 0, $"{dtype}, {rows} rows of {width}: {differ} values differ from libtorch's for their row alone");
    }

    /// <summary>The values of <paramref name="result"/> (rows of <paramref name="gate"/>'s shape) whose bits differ from
    /// libtorch's two calls on each row alone, compared as float32; with <paramref name="nanIsNaN"/> two NaNs count as the same.</summary>
    private static int DifferFromRowsAlone(Tensor gate, Tensor up, Tensor result, bool nanIsNaN)
    {
        int differ = 0;
        for (int r = 0; r < gate.shape[0]; r++)
        {
            using var g = gate.narrow(0, r, 1).contiguous();
            using var u = up.narrow(0, r, 1).contiguous();
            using var theirs = Libtorch(g, u);
            using var alone = theirs.to(ScalarType.Float32);
            using var inStep = result.narrow(0, r, 1).to(ScalarType.Float32).contiguous();
            differ += Bits32(alone).Zip(Bits32(inStep)).Count(p => p.First != p.Second
                && !(nanIsNaN && float.IsNaN(BitConverter.UInt32BitsToSingle(p.First)) && float.IsNaN(BitConverter.UInt32BitsToSingle(p.Second))));
        }
        return differ;
    }

    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float32)]
    public void A_llama_mlp_gives_the_same_bits_with_the_kernel_on_and_off(ScalarType dtype)
    {
        Assert.True(Avx512F.IsSupported);
        var mlp = new LlamaMlp(LlamaVariant.Llama, new LlamaConfig(64, 192, 1, 4, 4, 16, 10, 32, 1e-6, 10000, null, false, false, "silu", null));
        manual_seed(9);
        foreach (var (_, slot) in mlp.NamedTensors()) slot.Set((randn(slot.Shape) * 0.2).to(dtype));
        using var x = randn(1, 1, 64).to(dtype);
        using var on = mlp.Forward(x);
        SiluKernels.Enabled = false;
        Tensor off;
        try { off = mlp.Forward(x); }
        finally { SiluKernels.Enabled = true; }
        Assert.True(on.eq(off).all().item<bool>(), "the MLP's output changed with the fused kernel");
        Assert.True(SiluKernels.Applies(randn(1, 1, 192).to(dtype), randn(1, 1, 192).to(dtype)), "the test's shape takes the kernel");
    }
}
