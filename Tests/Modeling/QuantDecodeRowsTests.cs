using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Quantization;
using static TorchSharp.torch;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// The one-row (decode) kernels that take four output rows a pass (QuantDecodeRows): with either int4 nibble decoding
/// (permute, the default; mask-into-2²³), and the per-row kernels they replaced, each equals F.linear over the dequantized weight —
/// output counts that leave 1–3 rows past the last four and parts of the spin pool, zero points folded into the lane
/// sums, groups of 32/64/128/256 (two blocks a group) and per channel, act-order, bias, and bf16 inputs and outputs.
/// </summary>
public class QuantDecodeRowsTests
{
    [Theory]
    [InlineData(4, 32, false, false)]
    [InlineData(4, 32, true, true)]     // quarter-block scales and zero points (each specialisation of the int4 loop runs)
    [InlineData(4, 64, false, true)]
    [InlineData(4, 128, true, false)]
    [InlineData(4, 128, false, true)]
    [InlineData(4, 256, false, true)]   // 640 inputs: groups of two blocks (the block's group counted) and a short last one
    [InlineData(4, -1, true, true)]
    [InlineData(8, 32, false, false)]
    [InlineData(8, 32, true, true)]     // the one-step-a-group int8 loop (Int8Four32) with zero points
    [InlineData(8, 64, true, true)]
    [InlineData(8, -1, false, false)]
    public void Four_rows_a_pass_equal_linear_over_the_dequantized_weight(int bits, int groupSize, bool permute, bool zeros)
    {
        const int inF = 640;
        foreach (int outF in new[] { 1, 2, 3, 5, 6, 7, 130, 259 })
        {
            var rng = new Random(bits * 31 + groupSize * 7 + outF);
            var w = RandomPackedWeight.Create(rng, bits, outF, inF, groupSize, permute, zeros);
            using var dense = w.Dequantize();
            var bias = randn(outF);
            var x = randn(1, inF) * 3;
            var expected = nn.functional.linear(x, dense, bias).data<float>().ToArray();
            double codeBound = ((1 << bits) - 1) * w.Scales.max().item<float>() * x.abs().sum().item<float>();
            double tol = 1e-4 + 1e-6 * expected.Max(Math.Abs) + 1e-6 * codeBound;
            var xb = x.to(ScalarType.BFloat16);
            var expectedBf = nn.functional.linear(xb.to(ScalarType.Float32), dense, bias).data<float>().ToArray();
            foreach (var (rows, magic) in new[] { (true, true), (true, false), (false, true) })
            {
                QuantKernels.DecodeRowsEnabled = rows;
                QuantKernels.NibblesByMagic = magic;
                try
                {
                    string what = $"int{bits}, group {groupSize}, {outF} outputs, four rows {rows}, magic {magic}";
                    var actual = QuantKernels.Linear(x, w, bias).data<float>().ToArray();
                    ReferenceModelTests.AssertClose(expected.Select(v => (double)v).ToArray(), actual, tol, what);
                    // bf16 in and out: the float32 result rounded once to bf16 (relative 2^-9), against the bf16 input's product.
                    using var yb = QuantKernels.Linear(xb, w, bias);
                    Assert.Equal(ScalarType.BFloat16, yb.dtype);
                    var actualBf = yb.to(ScalarType.Float32).data<float>().ToArray();
                    for (int o = 0; o < outF; o++)
                        Assert.True(Math.Abs(actualBf[o] - expectedBf[o]) <= tol + Math.Abs(expectedBf[o]) / 256,
                            $"{what}, bf16: output {o} is {actualBf[o]}, expected {expectedBf[o]}");
                }
                finally
                {
                    QuantKernels.DecodeRowsEnabled = true;
                    QuantKernels.NibblesByMagic = QuantKernels.DefaultNibblesByMagic;
                }
            }
        }
    }

    /// <summary>The mask-into-2²³ decoding computes code·16^s · x·16^−s, which is code·x exactly while x·16^−s stays a
    /// normal float: for inputs from 1e-30 to 1e30 its outputs equal the permute decoding's bit for bit (same sums in the
    /// same order); inputs so small that the scaled value is subnormal (below ≈ 7.7e-34) lose low bits of products far
    /// below any tolerance, never more.</summary>
    [Fact]
    public void Magic_decoding_equals_the_permute_decoding_bit_for_bit()
    {
        const int outF = 13, inF = 384;
        var rng = new Random(5);
        var codes = Repack.Pack(4, outF, inF, (_, _) => rng.Next(16));
        var w = new PackedWeight(4, outF, inF, 128, codes, rand(outF, 3) + 0.5, null, null);
        foreach (float magnitude in new[] { 1e30f, 1f, 1e-30f, 3e-36f })
        {
            var x = randn(1, inF) * magnitude;
            float[] byPermute, byMagic;
            try
            {
                QuantKernels.NibblesByMagic = false;
                byPermute = QuantKernels.Linear(x, w, null).data<float>().ToArray();
                QuantKernels.NibblesByMagic = true;
                byMagic = QuantKernels.Linear(x, w, null).data<float>().ToArray();
            }
            finally { QuantKernels.NibblesByMagic = QuantKernels.DefaultNibblesByMagic; }
            Assert.Contains(byPermute, v => v != 0);
            for (int o = 0; o < outF; o++)
                if (magnitude >= 1e-30f) Assert.Equal(byPermute[o], byMagic[o]);
                else Assert.True(Math.Abs(byPermute[o] - byMagic[o]) <= 1e-36, $"{magnitude}: output {o} {byMagic[o]} vs {byPermute[o]}");
        }
    }

    /// <summary>The kernels read input perm[j] by address: a permutation that points outside the row (from a peer's message
    /// or a file) is refused with a typed error naming the weight's shape and the entry, before any read.</summary>
    [Fact]
    public void A_permutation_outside_the_row_is_refused_before_any_read()
    {
        const int outF = 8, inF = 256;
        var rng = new Random(9);
        var codes = Repack.Pack(4, outF, inF, (_, _) => rng.Next(16));
        var perm = Enumerable.Range(0, inF).Select(i => (long)i).ToArray();
        perm[17] = inF + 1000;
        var w = new PackedWeight(4, outF, inF, 128, codes, rand(outF, 2) + 0.5, null, tensor(perm));
        var e = Assert.Throws<ShapeMismatchException>(() => QuantKernels.Linear(randn(1, inF), w, null));
        Assert.Contains("permutation entry 17 is 1256", e.Message);
        perm[17] = -3;
        var w2 = new PackedWeight(4, outF, inF, 128, codes, rand(outF, 2) + 0.5, null, tensor(perm));
        Assert.Throws<ShapeMismatchException>(() => QuantKernels.Linear(randn(2, inF), w2, null));
    }

    /// <summary>
    /// A few input rows (a verification pass, a few streams' step: 2 to 15) through <see cref="QuantDecodeRows"/>: each row's
    /// outputs equal that row alone through the one-row kernel bit for bit — passes of two weight rows against two or
    /// three inputs (every split of 2–15 rows, odd output counts so a pass repeats its last row), int8 in groups of 32
    /// and wider — with group sizes 32/64/128/256/per channel, zero points, act-order, bias, and float32 and bf16 inputs; and
    /// they equal the per-row path that took these inputs before.
    /// </summary>
    [Theory]
    [InlineData(4, 32, false, true)]
    [InlineData(4, 64, true, false)]
    [InlineData(4, 128, false, false)]
    [InlineData(4, 256, true, true)]
    [InlineData(4, -1, false, true)]
    [InlineData(8, 32, true, true)]
    [InlineData(8, 64, false, false)]
    public void A_few_rows_give_each_row_the_one_row_kernels_outputs_bit_for_bit(int bits, int groupSize, bool permute, bool zeros)
    {
        const int inF = 640;
        foreach (int outF in new[] { 1, 7, 130 })
        {
            var rng = new Random(bits * 131 + groupSize * 17 + outF);
            var w = RandomPackedWeight.Create(rng, bits, outF, inF, groupSize, permute, zeros);
            using var dense = w.Dequantize();
            var bias = randn(outF);
            foreach (int m in new[] { 2, 3, 4, 5, 6, 7, 9, 15 })
                foreach (var type in new[] { ScalarType.Float32, ScalarType.BFloat16 })
                {
                    using var x = (randn(m, inF) * 2).to(type);
                    using var many = QuantKernels.Linear(x, w, bias);
                    var got = many.to(ScalarType.Float32).data<float>().ToArray();
                    for (int r = 0; r < m; r++)
                    {
                        using var one = QuantKernels.Linear(x.narrow(0, r, 1), w, bias);
                        var alone = one.to(ScalarType.Float32).data<float>().ToArray();
                        for (int o = 0; o < outF; o++)
                            Assert.True(BitConverter.SingleToInt32Bits(alone[o]) == BitConverter.SingleToInt32Bits(got[r * outF + o]),
                                $"int{bits}, group {groupSize}, {outF} outputs, {m} rows ({type}): row {r} output {o} is {got[r * outF + o]}, alone {alone[o]}");
                    }
                    // And against the weight itself: the float32 product over the dequantized weight.
                    if (type != ScalarType.Float32) continue;
                    var expected = nn.functional.linear(x, dense, bias).data<float>().ToArray();
                    double bound = ((1 << bits) - 1) * 2 * w.Scales.max().item<float>() * x.abs().sum(1).max().item<float>();
                    ReferenceModelTests.AssertClose(expected.Select(v => (double)v).ToArray(), got, 1e-4 + 1e-6 * bound, $"int{bits} group {groupSize}, {m} rows");
                }
        }
    }
}
