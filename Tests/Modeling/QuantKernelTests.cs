using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Quantization;
using static TorchSharp.torch;
using ShardPipe.Tests.Support;

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
        var w = RandomPackedWeight.Create(rng, bits, outF, inF, groupSize, permute, zeros);
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
    /// The many-row path on the spin pool (<see cref="QuantKernels.DenseOnPool"/>, the default): weights of several tiles
    /// (out features past two tiles' rows and not a multiple of 4) and inputs of one pass (16, 64 rows) or several (65,
    /// 150 rows: passes of at most 64), with act-order, zero points and a bias: each output row equals F.linear over the
    /// dequantized weight, and the libtorch GEMM path it replaced within float32 rounding.
    /// </summary>
    [Theory]
    [InlineData(4, 256, 32, false, true)]    // int4 wide layout, zero points
    [InlineData(4, 192, 64, true, false)]    // int4 act-order (the decoding's scalar gather), symmetric
    [InlineData(8, 160, 32, true, true)]     // int8 act-order, zero points
    public void Many_rows_on_the_pool_equal_linear_over_the_dequantized_weight_across_tiles_and_passes(int bits, int inF, int groupSize, bool permute, bool zeros)
    {
        int outF = 2 * QuantKernels.TileRows(inF, int.MaxValue) + 7;
        var rng = new Random(bits * 131 + inF);
        var w = RandomPackedWeight.Create(rng, bits, outF, inF, groupSize, permute, zeros);
        using var dense = w.Dequantize();
        var bias = randn(outF);
        foreach (int rows in new[] { QuantKernels.DenseRows, 64, 65, 150 })
        {
            var x = randn(rows, inF);
            var expected = nn.functional.linear(x, dense, bias).data<float>().ToArray();
            Assert.True(QuantKernels.DenseOnPool);
            var actual = QuantKernels.Linear(x, w, bias).data<float>().ToArray();
            float[] gemm;
            QuantKernels.DenseOnPool = false;
            try { gemm = QuantKernels.Linear(x, w, bias).data<float>().ToArray(); }
            finally { QuantKernels.DenseOnPool = true; }
            double tol = 1e-4 + 1e-6 * expected.Max(Math.Abs);
            ReferenceModelTests.AssertClose(expected.Select(v => (double)v).ToArray(), actual, tol, $"int{bits}, {outF} outputs, {rows} rows, on the pool");
            ReferenceModelTests.AssertClose(gemm.Select(v => (double)v).ToArray(), actual, tol, $"int{bits}, {outF} outputs, {rows} rows, pool against GEMM");
        }
    }

    /// <summary>
    /// bfloat16 inputs of <see cref="QuantKernels.DenseBf16Rows"/> rows and more (a bf16 model's prefill): the weight
    /// dequantized to bf16 in chunks on the pool, then libtorch's bf16 GEMM — equal to F.linear over the dequantized
    /// weight cast to bf16 (what transformers computes for a bf16 model whose quantized Linears hold their dequantized
    /// weights), with a weight of two chunks and a bias, and within bf16 rounding of the float32 tile path.
    /// </summary>
    [Theory]
    [InlineData(4, 32, true, false)]
    [InlineData(8, 128, false, false)]
    [InlineData(4, 64, false, true)]   // act-order: dequantized a row at a time through float32 (the permutation's scatter)
    public void Bf16_inputs_of_many_rows_equal_linear_over_the_bf16_dequantized_weight(int bits, int groupSize, bool zeros, bool permute)
    {
        const int inF = 512, outF = 4096 + 9; // 4 MB of bf16 weight a chunk: 4096 rows of 512, so two chunks
        var rng = new Random(bits * 17 + groupSize);
        var w = RandomPackedWeight.Create(rng, bits, outF, inF, groupSize, permute, zeros);
        using var dense = w.Dequantize();
        var bias = randn(outF).to(ScalarType.BFloat16);
        var x = randn(QuantKernels.DenseBf16Rows + 3, inF).to(ScalarType.BFloat16);
        var expected = nn.functional.linear(x, dense.to(ScalarType.BFloat16), bias).to(ScalarType.Float32).data<float>().ToArray();
        Assert.True(QuantKernels.DenseBf16Enabled);
        using var y = QuantKernels.Linear(x, w, bias);
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        var actual = y.to(ScalarType.Float32).data<float>().ToArray();
        ReferenceModelTests.AssertClose(expected.Select(v => (double)v).ToArray(), actual, 1e-6, $"int{bits}: the bf16 GEMM over the bf16 dequantized weight");
        float[] tiles;
        QuantKernels.DenseBf16Enabled = false;
        try { tiles = QuantKernels.Linear(x, w, bias).to(ScalarType.Float32).data<float>().ToArray(); }
        finally { QuantKernels.DenseBf16Enabled = true; }
        // The float32 tile path keeps the exact dequantized values: the two differ by the weights' bf16 rounding (2^-9 relative each).
        double scale = expected.Max(Math.Abs);
        ReferenceModelTests.AssertClose(tiles.Select(v => (double)v).ToArray(), actual, scale / 32, $"int{bits}: against the float32 tiles");
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
        var w = RandomPackedWeight.Create(rng, bits, outF, inF, groupSize, permute, zeros);
        using var dense = w.Dequantize();
        var bias = randn(outF);
        foreach (int rows in new[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, QuantKernels.DenseRows, 40 })
        {
            var x = randn(rows, inF);
            var expected = nn.functional.linear(x, dense, rows % 2 == 0 ? bias : null).data<float>().ToArray();
            var actual = QuantKernels.Linear(x, w, rows % 2 == 0 ? bias : null).data<float>().ToArray();
            // 1e-4, plus float32's own accumulation error: the kernels sum code·x and subtract zero·Σx after, so their
            // rounding scales with Σ (code + zero)·scale·|x| over a row (random 8-bit codes and zero points up to 255,
            // scales up to 0.11: hundreds), not with the output; a few float32 ulps of that bound each row. A wrong
            // weight still misses by O(scale · |x|) ≫ this.
            double maxCode = (1 << bits) - 1, maxZero = zeros ? maxCode : 1 << (bits - 1), maxScale = w.Scales.max().item<float>();
            var absRowSums = x.abs().sum(1).data<float>().ToArray();
            for (int r = 0; r < rows; r++)
            {
                double tol = 1e-4 + 8 * 1.2e-7 * (maxCode + maxZero) * maxScale * absRowSums[r];
                ReferenceModelTests.AssertClose(expected.Skip(r * outF).Take(outF).Select(v => (double)v).ToArray(), actual.Skip(r * outF).Take(outF).ToArray(), tol,
                    $"bits {bits}, in {inF}, group {groupSize}, {rows} rows, row {r}");
            }
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

    /// <summary>
    /// Every row count from 1 to 17 (one row, the 4-row tiles with every remainder, and the dequantize-and-GEMM path from
    /// <see cref="QuantKernels.DenseRows"/>), groups of 32, 64, 128 and per channel, shapes that take the wide int4 layout
    /// (inputs a multiple of 128), the paired one (a multiple of 32 only) and the portable one, with and without zero points
    /// and act-order: the AVX-512 path and the portable path forced on the same weights each equal F.linear over the
    /// dequantized weight.
    /// </summary>
    [Theory]
    [InlineData(4, 37, 256, 32, false, false)]   // wide int4, 4 groups per 128-code block, symmetric
    [InlineData(4, 29, 384, 64, false, true)]    // wide int4, 2 groups per block, zero points
    [InlineData(4, 23, 384, 128, true, true)]    // wide int4, one group per block, act-order
    [InlineData(4, 31, 640, 256, false, true)]   // wide int4, two blocks per group, short last group (640 = 2·256 + 128)
    [InlineData(4, 19, 512, -1, false, false)]   // wide int4, per channel
    [InlineData(4, 11, 2048, 32, false, true)]   // wide int4, 64 groups: vector zero term, many blocks
    [InlineData(4, 13, 224, 32, false, false)]   // paired int4: 224 is whole 32-code blocks, not 128
    [InlineData(4, 9, 192, 96, false, true)]     // paired int4: groups of 96
    [InlineData(8, 15, 384, 64, false, true)]    // int8 SIMD, groups of 64
    [InlineData(8, 7, 256, -1, true, false)]     // int8 SIMD per channel, act-order
    [InlineData(4, 5, 100, 32, false, true)]     // portable only: 100 inputs
    public void Simd_and_portable_paths_equal_linear_over_the_dequantized_weight_for_1_to_17_rows(int bits, int outF, int inF, int groupSize, bool permute, bool zeros)
    {
        var rng = new Random(bits * 104729 + inF * 17 + outF + groupSize);
        var w = RandomPackedWeight.Create(rng, bits, outF, inF, groupSize, permute, zeros);
        using var dense = w.Dequantize();
        var bias = randn(outF);
        for (int rows = 1; rows <= 17; rows++)
        {
            var x = randn(rows, inF);
            var b = rows % 3 == 0 ? bias : null;
            var expected = nn.functional.linear(x, dense, b).data<float>().ToArray();
            // The kernels accumulate Σ code·x in float32 and subtract zero·Σx after (the zero point is 2^(bits-1) when
            // symmetric), so their rounding scales with Σ |code·scale·x|, not with the output: bound that per output.
            double codeBound = ((1 << bits) - 1) * w.Scales.max().item<float>() * x.abs().sum(1).max().item<float>();
            double tol = 1e-4 + 1e-6 * expected.Max(Math.Abs) + 1e-6 * codeBound;
            foreach (bool portable in new[] { false, true })
            {
                var actual = QuantKernels.Linear(x, w, b, portable).data<float>().ToArray();
                ReferenceModelTests.AssertClose(expected.Select(v => (double)v).ToArray(), actual, tol,
                    $"bits {bits}, in {inF}, group {groupSize}, {rows} rows, {(portable ? "portable" : "default")} path");
            }
        }
    }

    /// <summary>The wide int4 layout reads the codes of a word in nibble order: a weight whose only nonzero code sits at one
    /// column must give exactly that column's input times its scale, for every column of a block (a wrong lane or run order fails).</summary>
    [Fact]
    public void Wide_int4_layout_puts_each_code_against_its_own_input()
    {
        const int inF = 256, outF = 2;
        var x = arange(1, inF + 1, ScalarType.Float32).reshape(1, inF) / 64;
        var xs = x.data<float>().ToArray();
        foreach (int col in new[] { 0, 1, 7, 8, 9, 15, 16, 63, 64, 120, 127, 128, 135, 200, 255 })
        {
            // Symmetric: zero = 8, so code 9 at the column and 8 elsewhere gives scale·(9 − 8) = scale at that column only.
            var codes = Repack.Pack(4, outF, inF, (o, j) => j == col ? 9 : 8);
            var scales = full(outF, inF / 32, 0.5f);
            var w = new PackedWeight(4, outF, inF, 32, codes, scales, null, null);
            var y = QuantKernels.Linear(x, w, null).data<float>().ToArray();
            Assert.Equal(0.5f * xs[col], y[0], 5);
            Assert.Equal(0.5f * xs[col], y[1], 5);
        }
    }

    /// <summary>The wide layout's two nibble decodings (16-entry permute, the default; mask and convert) and the paired
    /// layout forced on a wide-shaped weight all equal F.linear over the dequantized weight, 1–6 rows (the switches are
    /// the benchmark's; each setting is correct, so another test seeing it mid-run still passes).</summary>
    [Theory]
    [InlineData(32, true)]
    [InlineData(64, false)]
    [InlineData(128, true)]
    [InlineData(-1, false)]
    public void Every_int4_kernel_variant_equals_linear_over_the_dequantized_weight(int groupSize, bool zeros)
    {
        const int outF = 21, inF = 512;
        var rng = new Random(groupSize + 977);
        var w = RandomPackedWeight.Create(rng, 4, outF, inF, groupSize, permute: false, zeros);
        using var dense = w.Dequantize();
        foreach (var (wide, permute) in new[] { (true, false), (false, true), (true, true) })
        {
            QuantKernels.WideInt4Enabled = wide;
            QuantKernels.NibblesByPermute = permute;
            try
            {
                for (int rows = 1; rows <= 6; rows++)
                {
                    var x = randn(rows, inF);
                    var expected = nn.functional.linear(x, dense).data<float>().ToArray();
                    var actual = QuantKernels.Linear(x, w, null).data<float>().ToArray();
                    ReferenceModelTests.AssertClose(expected.Select(v => (double)v).ToArray(), actual, 1e-4 + 1e-6 * expected.Max(Math.Abs),
                        $"group {groupSize}, wide {wide}, permute {permute}, {rows} rows");
                }
            }
            finally
            {
                QuantKernels.WideInt4Enabled = true;
                QuantKernels.NibblesByPermute = true;
            }
        }
    }
}
