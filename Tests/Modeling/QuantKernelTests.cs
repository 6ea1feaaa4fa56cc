using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Quantization;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>The int4/int8 kernels (AVX-512 and portable paths, one row and many) equal F.linear over the dequantized weight.</summary>
public class QuantKernelTests
{
    [Theory]
    [InlineData(4, 40, 96, 32, true, true)]    // AVX-512 int4, act-order permutation, zero points
    [InlineData(4, 36, 128, 128, false, false)] // AVX-512 int4, one group, symmetric
    [InlineData(8, 24, 64, 16, true, true)]     // AVX-512 int8
    [InlineData(4, 24, 40, 8, true, true)]      // portable: groups of 8
    [InlineData(8, 20, 24, -1, false, true)]    // portable int8, per channel
    public void Kernel_equals_linear_over_the_dequantized_weight(int bits, int outF, int inF, int groupSize, bool permute, bool zeros)
    {
        var rng = new Random(bits * 1000 + inF);
        int gs = groupSize <= 0 ? inF : groupSize, groups = (inF + gs - 1) / gs;
        var codes = Repack.Pack(bits, outF, inF, (_, _) => rng.Next(1 << bits));
        var scales = rand(outF, groups) * 0.1 + 0.01;
        var zp = zeros ? tensor(Enumerable.Range(0, outF * groups).Select(_ => (float)rng.Next(1 << bits)).ToArray(), new long[] { outF, groups }) : null;
        var perm = permute ? tensor(Enumerable.Range(0, inF).OrderBy(_ => rng.Next()).Select(i => (long)i).ToArray()) : null;
        var w = new PackedWeight(bits, outF, inF, groupSize, codes, scales, zp, perm);
        using var dense = w.Dequantize();
        var bias = randn(outF);
        foreach (int rows in new[] { 1, 3, 9 })
        {
            var x = randn(rows, inF);
            var expected = nn.functional.linear(x, dense, bias).data<float>().ToArray();
            var actual = QuantKernels.Linear(x, w, bias).data<float>().ToArray();
            ReferenceModelTests.AssertClose(expected.Select(v => (double)v).ToArray(), actual, 1e-4, $"bits {bits}, {rows} rows");
        }
        var bf = randn(2, inF).to(ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, QuantKernels.Linear(bf, w, null).dtype);
    }
}
