using ShardPipe.Modeling.Layers;
using Xunit;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// Float32 inputs longer than <see cref="Fp32Kernels.MaxRows"/> (a prefill, many arriving prompts as one merged step):
/// the kernel in passes of at most MaxRows rows (<see cref="Fp32LongInputs"/>).
/// </summary>
public class Fp32LongInputsTests
{
    [Theory]
    [InlineData(65)]
    [InlineData(129)]
    [InlineData(441)]
    [InlineData(1000)]
    public void Passes_are_near_equal_within_the_row_limit_and_cover_every_row(int m)
    {
        int passes = Fp32LongInputs.Passes(m);
        var rows = Enumerable.Range(0, passes).Select(p => Fp32LongInputs.PassRows(m, passes, p)).ToList();
        Assert.Equal(m, rows.Sum());
        Assert.All(rows, r => Assert.InRange(r, 2, Fp32Kernels.MaxRows)); // every pass takes the multi-row kernel
        Assert.True(rows.Max() - rows.Min() <= 1);
        Assert.Equal((m + Fp32Kernels.MaxRows - 1) / Fp32Kernels.MaxRows, passes); // the fewest passes
    }

    [Theory]
    [InlineData(65, 96, 130, false)]
    [InlineData(150, 768, 259, false)]
    [InlineData(441, 768, 64, false)]
    [InlineData(150, 100, 37, true)]
    public void A_long_input_gives_each_row_the_bits_of_that_row_in_a_short_input(int rows, int k, int n, bool portable)
    {
        if (!portable && !System.Runtime.Intrinsics.X86.Avx512F.IsSupported) return; // the AVX-512 path needs the ISA; the portable one runs everywhere
        manual_seed(rows + k + n);
        var w = randn(n, k);
        var b = randn(n);
        var x = randn(1, rows, k);
        Assert.True(Fp32Kernels.Applies(x, w) || !System.Numerics.Vector.IsHardwareAccelerated); // a model's prefill takes the kernel
        using var ours = Fp32Kernels.Linear(x, w, b, portable);
        Assert.Equal(new long[] { 1, rows, n }, ours.shape);
        // Within float32 rounding of the float64 product.
        using var exact = nn.functional.linear(x.to(ScalarType.Float64), w.to(ScalarType.Float64), b.to(ScalarType.Float64));
        double err = (ours.to(ScalarType.Float64) - exact).abs().max().item<double>();
        double scale = exact.abs().max().item<double>();
        Assert.True(err <= 1e-5 * Math.Max(1, scale) * Math.Sqrt(k), $"max error {err} (scale {scale})");
        // Bit for bit what the same rows give in a short input (a prompt alone vs merged with others: the same tokens).
        foreach (int start in new[] { 0, 7, rows / 2, rows - 5 })
        {
            int count = Math.Min(5, rows - start);
            using var part = Fp32Kernels.Linear(x.narrow(1, start, count), w, b, portable);
            Assert.True(ours.narrow(1, start, count).allclose(part, 0, 0), $"rows {start}..{start + count} differ from the same rows computed alone");
        }
    }
}
