using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// Every AVX-512 float32 path sums a row in one order, so a row's bits do not depend on how many rows its input has:
/// the few-row path (2..<see cref="Fp32Kernels.FewRows"/> rows: a verification pass of k + 1 positions), the
/// register-blocked one (a merged step) and the long-input passes (a prefill) give each row exactly the bits the one-row
/// kernel gives it alone — a speculative pass's products equal single-row decode's, a request's tokens do not depend on
/// the requests merged beside it — and stay within float rounding of libtorch's linear.
/// </summary>
public class Fp32FewRowsTests
{
    [Theory]
    [InlineData(2, 768, 37, false)]
    [InlineData(3, 2048, 20, true)]
    [InlineData(4, 100, 9, true)]      // 64 + 2 × 16 + 4: every tail
    [InlineData(5, 768, 259, false)]   // the verification pass of k = 4
    [InlineData(5, 2069, 13, true)]    // 32 × 64 + 16 + 5
    [InlineData(6, 47, 11, false)]     // no 64-float chunk at all
    [InlineData(6, 1100, 9, true)]     // 25.8 KB of input rows: past FewRowsFit, the register-blocked kernel
    [InlineData(4, 2048, 6, false)]    // a down projection, 32 KB: the register-blocked kernel too
    [InlineData(3, 2048, 6, false)]    // 24 KB: the last few-row input of k = 2048
    [InlineData(6, 16, 5, true)]
    [InlineData(7, 768, 40, false)]    // the register-blocked kernel from here
    [InlineData(16, 2048, 21, true)]
    [InlineData(64, 100, 9, false)]
    [InlineData(150, 768, 13, true)]   // past 64 rows: passes of the register-blocked kernel (Fp32LongInputs)
    public void Each_row_equals_the_one_row_kernel_bit_for_bit(int rows, int k, int n, bool bias)
    {
        if (!System.Runtime.Intrinsics.X86.Avx512F.IsSupported) return; // the few-row path is the AVX-512 one
        manual_seed(rows * 7919 + k + n);
        using var w = randn(n, k);
        using var b = bias ? randn(n) : null;
        using var x = randn(rows, k);
        using var together = Fp32Kernels.Linear(x, w, b, portable: false);
        for (int r = 0; r < rows; r++)
        {
            using var alone = Fp32Kernels.Linear(x[r].unsqueeze(0), w, b, portable: false);
            var a = alone.data<float>().ToArray();
            var t = together[r].data<float>().ToArray();
            for (int j = 0; j < n; j++)
                Assert.True(BitConverter.SingleToInt32Bits(a[j]) == BitConverter.SingleToInt32Bits(t[j]), $"row {r}, column {j}: alone {a[j]:R}, with {rows} rows {t[j]:R}");
        }
        using var reference = nn.functional.linear(x.to(ScalarType.Float64), w.to(ScalarType.Float64), b?.to(ScalarType.Float64));
        double worst = (together.to(ScalarType.Float64) - reference).abs().max().item<double>();
        Assert.True(worst < 1e-3, $"off libtorch's float64 linear by {worst}");
    }
}
