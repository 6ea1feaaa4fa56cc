using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Quantization;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// A decode step's per-token work outside the Linears, round 2: the q/k/v (gate/up) projections as one kernel job give
/// each projection's own output to the bit, whatever the split into parts; Linears the kernel does not take fall back to
/// their own forward; the attention kernel's in-register bf16 widening gives the same sums as widening into a row first.
/// </summary>
public unsafe class GroupedLinearTests
{
    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.eq(b).all().item<bool>();

    [Theory]
    [InlineData(1, 768, new[] { 768, 256, 256 }, false)] // grouped-query q, k, v
    [InlineData(1, 768, new[] { 2048, 2048 }, false)]    // gate, up
    [InlineData(3, 100, new[] { 37, 5, 130 }, true)]     // odd sizes: row tails inside and across the weights' boundaries
    [InlineData(8, 64, new[] { 3 }, true)]               // one small weight: one part
    public void Grouped_bf16_linears_equal_each_linear_to_the_bit(int rows, int k, int[] outs, bool bias)
    {
        if (!System.Runtime.Intrinsics.X86.Avx512F.IsSupported) return; // the kernel stands aside; DecodeKernelTests checks that
        manual_seed(rows * 1000 + k);
        var x = randn(1, rows, k).to(ScalarType.BFloat16);
        var weights = outs.Select(n => randn(n, k).to(ScalarType.BFloat16)).ToArray();
        var biases = outs.Select((n, i) => bias && i != 1 ? randn(n).to(ScalarType.BFloat16) : null).ToArray(); // a weight without bias among them
        var grouped = DecodeKernels.LinearsBf16(x, weights, biases);
        Assert.Equal(outs.Length, grouped.Length);
        for (int i = 0; i < outs.Length; i++)
        {
            using var alone = DecodeKernels.LinearBf16(x, weights[i], biases[i]);
            Assert.Equal(new long[] { 1, rows, outs[i] }, grouped[i].shape);
            Assert.True(Same(alone, grouped[i]), $"output {i} differs from its Linear alone");
        }
    }

    [Fact]
    public void Linears_forward_together_as_each_forwards_alone_and_fall_back_where_the_kernel_stands_aside()
    {
        manual_seed(5);
        foreach (var dtype in new[] { ScalarType.BFloat16, ScalarType.Float32, ScalarType.Float16 }) // float16: the fallback, each Linear's own forward
        {
            var linears = new[] { new Linear(64, 96, bias: true), new Linear(64, 32, bias: false) };
            foreach (var l in linears)
            {
                l.Weight.Set(randn(l.OutFeatures, 64).to(dtype));
                l.Bias?.Set(randn(l.OutFeatures).to(dtype));
            }
            var x = randn(2, 64).to(dtype);
            var together = Linear.Forward(x, linears);
            for (int i = 0; i < linears.Length; i++)
            {
                using var alone = linears[i].Forward(x);
                Assert.True(Same(alone, together[i]), $"{dtype}: output {i}");
            }
        }
    }

    [Theory]
    [InlineData(1, 768, new[] { 768, 256, 256 }, false)] // grouped-query q, k, v
    [InlineData(1, 768, new[] { 2048, 2048 }, true)]     // gate, up
    [InlineData(5, 100, new[] { 37, 5, 130 }, true)]     // a verification pass's rows; row tails inside and across the weights
    [InlineData(16, 64, new[] { 70, 3 }, false)]         // a merged step of 16 rows
    [InlineData(70, 48, new[] { 9, 20 }, true)]          // past one pass of rows (Fp32LongInputs)
    public void Grouped_fp32_linears_equal_each_linear_to_the_bit(int rows, int k, int[] outs, bool bias)
    {
        manual_seed(rows * 1000 + k + 7);
        var x = randn(rows, k);
        var weights = outs.Select(n => randn(n, k)).ToArray();
        var biases = outs.Select((n, i) => bias && i != 1 ? randn(n) : null).ToArray();
        Assert.All(weights, w => Assert.True(Fp32Kernels.Applies(x, w)));
        var grouped = Fp32Kernels.Linears(x, weights, biases);
        for (int i = 0; i < outs.Length; i++)
        {
            using var alone = Fp32Kernels.Linear(x, weights[i], biases[i]);
            Assert.Equal(new long[] { rows, outs[i] }, grouped[i].shape);
            Assert.True(Same(alone, grouped[i]), $"output {i} differs from its Linear alone");
        }
    }

    [Theory]
    [InlineData(4, 128, false, ScalarType.BFloat16)]
    [InlineData(4, 32, true, ScalarType.BFloat16)]
    [InlineData(4, 64, false, ScalarType.Float32)]
    [InlineData(8, 32, false, ScalarType.BFloat16)]
    [InlineData(8, 64, true, ScalarType.Float32)]
    public void Grouped_packed_linears_of_one_row_equal_each_linear_to_the_bit(int bits, int groupSize, bool zeros, ScalarType dtype)
    {
        var rng = new Random(bits * 100 + groupSize);
        manual_seed(bits + groupSize);
        int k = 256;
        var outs = new[] { 256, 60, 130 }; // the last two: row counts that are not whole fours of the kernel's passes
        var weights = outs.Select(n => RandomPackedWeight.Create(rng, bits, n, k, groupSize, permute: false, zeros)).ToArray();
        var biases = outs.Select((n, i) => i == 1 ? randn(n).to(dtype) : null).ToArray();
        var x = randn(1, 1, k).to(dtype);
        if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported) Assert.True(QuantKernels.DecodeRowsTogether(weights));
        var grouped = QuantKernels.Linears(x, weights, biases);
        for (int i = 0; i < outs.Length; i++)
        {
            using var alone = QuantKernels.Linear(x, weights[i], biases[i]);
            Assert.Equal(new long[] { 1, 1, outs[i] }, grouped[i].shape);
            Assert.True(Same(alone, grouped[i]), $"output {i} differs from its Linear alone");
        }
    }

    [Fact]
    public void Packed_linears_of_different_input_orders_or_several_rows_run_each_alone()
    {
        var rng = new Random(3);
        manual_seed(3);
        var plain = RandomPackedWeight.Create(rng, 4, 64, 256, 32, permute: false, zeros: true);
        var permuted = RandomPackedWeight.Create(rng, 4, 64, 256, 32, permute: true, zeros: true); // act-order: its own gather
        var int8 = RandomPackedWeight.Create(rng, 8, 64, 256, 32, permute: false, zeros: true);
        Assert.False(QuantKernels.DecodeRowsTogether(new[] { plain, permuted }));
        Assert.False(QuantKernels.DecodeRowsTogether(new[] { plain, int8 }));
        foreach (var (pair, rows) in new[] { (new[] { plain, permuted }, 1), (new[] { plain, int8 }, 1), (new[] { plain, plain }, 3) })
        {
            var x = randn(rows, 256).to(ScalarType.BFloat16);
            var grouped = QuantKernels.Linears(x, pair, new Tensor?[] { null, null });
            for (int i = 0; i < 2; i++)
            {
                using var alone = QuantKernels.Linear(x, pair[i], null);
                Assert.True(Same(alone, grouped[i]), $"rows {rows}: output {i}");
            }
        }
        Assert.Throws<ShardPipe.ShapeMismatchException>(() => QuantKernels.Linears(randn(1, 100), new[] { plain }, new Tensor?[] { null }));
    }

    [Fact]
    public void Grouped_linears_refuse_mismatched_inputs()
    {
        var x = randn(1, 64).to(ScalarType.BFloat16);
        var w = randn(8, 32).to(ScalarType.BFloat16);
        Assert.Throws<ArgumentException>(() => DecodeKernels.LinearsBf16(x, new[] { w }, new Tensor?[] { null }));
        Assert.Throws<ArgumentException>(() => DecodeKernels.LinearsBf16(x, new[] { w }, Array.Empty<Tensor?>()));
        var x32 = randn(1, 64);
        Assert.Throws<ArgumentException>(() => Fp32Kernels.Linears(x32, new[] { randn(8, 32) }, new Tensor?[] { null }));
        Assert.Throws<ArgumentException>(() => Fp32Kernels.Linears(x32, new[] { randn(8, 64) }, Array.Empty<Tensor?>()));
    }

    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    public void Attention_bf16_dot_and_axpy_in_registers_equal_widening_first(int n)
    {
        var rng = new Random(n);
        var a = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
        var raw = Enumerable.Range(0, n).Select(_ => (ushort)(BitConverter.SingleToUInt32Bits((float)(rng.NextDouble() * 4 - 2)) >> 16)).ToArray();
        var wide = raw.Select(r => BitConverter.UInt32BitsToSingle((uint)r << 16)).ToArray();
        var y1 = Enumerable.Range(0, n).Select(i => (float)Math.Sin(i)).ToArray();
        var y2 = (float[])y1.Clone();
        fixed (float* ap = a, wp = wide, p1 = y1, p2 = y2)
        fixed (ushort* rp = raw)
        {
            Assert.Equal(BitConverter.SingleToUInt32Bits(DecodeAttention.Dot(ap, wp, n)), BitConverter.SingleToUInt32Bits(DecodeAttention.DotBf16(ap, rp, n)));
            DecodeAttention.Axpy(0.37f, wp, p1, n);
            DecodeAttention.AxpyBf16(0.37f, rp, p2, n);
        }
        Assert.Equal(y1.Select(BitConverter.SingleToUInt32Bits), y2.Select(BitConverter.SingleToUInt32Bits));
    }
}
