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

    /// <summary>
    /// Odd shapes through every path: one row (decode), 2–8 rows (the row-tiled kernel), 9–15, and from
    /// <see cref="QuantKernels.DenseRows"/> rows up the dequantize-and-GEMM path; groups 32/64/128/per channel, inputs that
    /// are not a multiple of the group (a short last group), and inputs not a multiple of the SIMD block (portable path).
    /// </summary>
    [Theory]
    [InlineData(4, 33, 160, 64, false, false)]  // SIMD int4, short last group (160 = 2·64 + 32), symmetric
    [InlineData(4, 70, 96, 32, false, false)]   // SIMD int4, groups of 32 (llama.cpp's Q4_0 block), 6 groups → vector zero term off
    [InlineData(4, 17, 1024, 32, false, true)]  // SIMD int4, 32 groups: vector zero term with zero points
    [InlineData(4, 9, 544, 32, false, false)]   // 17 groups: vector zero term and a scalar tail
    [InlineData(8, 21, 608, 32, false, false)]  // SIMD int8, 19 groups of 32
    [InlineData(8, 19, 160, 128, true, true)]   // SIMD int8, short last group, act-order, zero points
    [InlineData(4, 12, 96, 128, false, true)]   // group larger than the inputs: one group
    [InlineData(4, 25, 200, 64, false, false)]  // 200 inputs: portable path (not whole 16-byte blocks)
    [InlineData(8, 8, 72, -1, true, false)]     // per channel, act-order permutation
    [InlineData(4, 40, 256, -1, false, true)]   // SIMD int4 per channel
    public void Kernel_equals_linear_over_the_dequantized_weight_for_odd_shapes_and_every_row_count(int bits, int outF, int inF, int groupSize, bool permute, bool zeros)
    {
        var rng = new Random(bits * 7919 + inF * 31 + outF);
        int gs = groupSize <= 0 ? inF : Math.Min(groupSize, inF), groups = (inF + gs - 1) / gs;
        var codes = Repack.Pack(bits, outF, inF, (_, _) => rng.Next(1 << bits));
        var scales = rand(outF, groups) * 0.1 + 0.01;
        var zp = zeros ? tensor(Enumerable.Range(0, outF * groups).Select(_ => (float)rng.Next(1 << bits)).ToArray(), new long[] { outF, groups }) : null;
        var perm = permute ? tensor(Enumerable.Range(0, inF).OrderBy(_ => rng.Next()).Select(i => (long)i).ToArray()) : null;
        var w = new PackedWeight(bits, outF, inF, groupSize, codes, scales, zp, perm);
        using var dense = w.Dequantize();
        var bias = randn(outF);
        foreach (int rows in new[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, QuantKernels.DenseRows, 40 })
        {
            var x = randn(rows, inF);
            var expected = nn.functional.linear(x, dense, rows % 2 == 0 ? bias : null).data<float>().ToArray();
            var actual = QuantKernels.Linear(x, w, rows % 2 == 0 ? bias : null).data<float>().ToArray();
            // 1e-4, plus float32's own accumulation error on outputs in the hundreds (random 8-bit codes, scales up to 0.11).
            double tol = 1e-4 + 1e-6 * expected.Max(Math.Abs);
            ReferenceModelTests.AssertClose(expected.Select(v => (double)v).ToArray(), actual, tol, $"bits {bits}, in {inF}, group {groupSize}, {rows} rows");
        }
        // A 3-d input in bfloat16 through the GEMM path: float32 inside, rounded once to bfloat16 as the kernel path does.
        var bx = randn(2, 20, inF).to(ScalarType.BFloat16);
        var by = QuantKernels.Linear(bx, w, bias);
        Assert.Equal(new long[] { 2, 20, outF }, by.shape);
        Assert.Equal(ScalarType.BFloat16, by.dtype);
        var bexpected = nn.functional.linear(bx.to(ScalarType.Float32), dense, bias).to(ScalarType.BFloat16).to(ScalarType.Float32).data<float>().ToArray();
        ReferenceModelTests.AssertClose(bexpected.Select(v => (double)v).ToArray(), by.to(ScalarType.Float32).data<float>().ToArray(),
            bexpected.Max(Math.Abs) / 128, "bfloat16 GEMM path"); // within one bfloat16 rounding of the largest output
    }
}
