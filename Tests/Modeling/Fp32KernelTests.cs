using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>The float32 matrix-vector kernel equals libtorch's linear for every shape it takes, on both of its paths.</summary>
public class Fp32KernelTests
{
    public static IEnumerable<object[]> Shapes()
    {
        // rows 1..17, 33, 64 and 65 (one row, every register-block split of 2..16 rows, the limit and one past it, which
        // the kernel still computes when called directly); in/out features on and off the 16-lane, 32-column and 4-row
        // steps; with and without bias.
        var shapes = new (int Rows, int K, int N, bool Bias)[]
        {
            (1, 768, 2048, false), (1, 2048, 768, true), (2, 100, 37, true), (3, 33, 5, false), (4, 17, 130, true),
            (5, 64, 64, false), (5, 768, 259, true), (6, 1, 3, true), (7, 48, 67, false), (8, 771, 259, true), (8, 15, 4, false),
            (9, 129, 33, true), (10, 16, 8, false), (11, 47, 101, true), (12, 768, 96, false), (13, 5, 7, true),
            (14, 200, 45, false), (15, 31, 12, true), (16, 768, 2048, true), (16, 2048, 771, false), (17, 65, 19, true),
            (33, 40, 9, false), (64, 130, 21, true), (65, 17, 6, false),
        };
        foreach (var s in shapes)
            foreach (bool portable in new[] { false, true })
                yield return new object[] { s.Rows, s.K, s.N, s.Bias, portable };
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void The_fp32_kernel_matches_libtorch_linear(int rows, int k, int n, bool bias, bool portable)
    {
        if (!portable && !System.Runtime.Intrinsics.X86.Avx512F.IsSupported) return; // the AVX-512 path needs the ISA; the portable one runs everywhere
        manual_seed(rows * 1000 + k + n);
        var w = randn(n, k);
        var b = bias ? randn(n) : null;
        var x = randn(1, rows, k);
        Assert.True(Fp32Kernels.Applies(x, w) || !System.Numerics.Vector.IsHardwareAccelerated); // longer than MaxRows: in passes (Fp32LongInputs)
        using var ours = Fp32Kernels.Linear(x, w, b, portable);
        AssertClose(x, w, b, ours, new long[] { 1, rows, n });
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Non_contiguous_inputs_and_a_bias_of_another_dtype_give_the_same_result(bool portable)
    {
        if (!portable && !System.Runtime.Intrinsics.X86.Avx512F.IsSupported) return;
        manual_seed(11);
        var w = randn(45, 70);
        using var wide = randn(3, 140);
        var x = wide[.., TensorIndex.Slice(0, 140, 2)]; // (3, 70) with stride 2
        Assert.False(x.is_contiguous());
        var b = randn(45, dtype: ScalarType.Float64);
        using var ours = Fp32Kernels.Linear(x, w, b, portable);
        AssertClose(x, w, b, ours, new long[] { 3, 45 });
        var xt = randn(70, 5).t(); // (5, 70), transposed
        using var ours2 = Fp32Kernels.Linear(xt, w, null, portable);
        AssertClose(xt, w, null, ours2, new long[] { 5, 45 });
    }

    /// <summary>
    /// A thread packs a job's input rows once for all its parts of the job: an input buffer refilled in place between
    /// two products (as the decode layer refills its buffers layer after layer) is packed again, and the outputs are the
    /// bits of packing per part.
    /// </summary>
    [Theory]
    [InlineData(16)]  // one pass
    [InlineData(150)] // three passes of 50 rows (Fp32LongInputs), each packed once a thread
    public void Input_rows_refilled_in_place_are_packed_again_for_the_next_product(int rows)
    {
        if (!System.Runtime.Intrinsics.X86.Avx512F.IsSupported) return;
        manual_seed(29);
        var w = randn(1031, 2048); // many parts a thread
        using var x = randn(rows, 2048);
        using var first = Fp32Kernels.Linear(x, w, null);
        AssertClose(x, w, null, first, new long[] { rows, 1031 });
        using (var fresh = randn(rows, 2048)) x.copy_(fresh); // the same memory, new rows
        using var second = Fp32Kernels.Linear(x, w, null);
        AssertClose(x, w, null, second, new long[] { rows, 1031 });
        Fp32Kernels.PackOncePerJob = false;
        try
        {
            using var perPart = Fp32Kernels.Linear(x, w, null);
            Assert.True(perPart.eq(second).all().item<bool>(), "packing once a job changed the bits");
        }
        finally { Fp32Kernels.PackOncePerJob = true; }
    }

    [Theory]
    [InlineData(2, false)]
    [InlineData(13, false)]
    [InlineData(13, true)]
    public void Large_outputs_split_over_the_helper_threads_cover_every_row(int rows, bool portable)
    {
        // 4099 rows: the parts over the helpers end on four-row boundaries and the last takes the odd tail.
        if (!portable && !System.Runtime.Intrinsics.X86.Avx512F.IsSupported) return;
        manual_seed(5);
        var w = randn(4099, 96);
        var x = randn(rows, 96);
        using var ours = Fp32Kernels.Linear(x, w, null, portable);
        AssertClose(x, w, null, ours, new long[] { rows, 4099 });
    }

    [Fact]
    public void The_fp32_row_limit_is_its_own_and_the_bf16_kernels_is_unchanged()
    {
        // A 16-stream merged step and a speculative pass of up to 16 positions take the fp32 kernel; bf16 keeps its 8.
        var w = randn(16, 32);
        Assert.True(Fp32Kernels.Applies(randn(1, 16, 32), w) || !System.Numerics.Vector.IsHardwareAccelerated);
        Assert.Equal(System.Runtime.Intrinsics.X86.Avx512F.IsSupported, DecodeKernels.Applies(randn(1, 8, 32).to(ScalarType.BFloat16), w.to(ScalarType.BFloat16)));
        Assert.False(DecodeKernels.Applies(randn(1, 9, 32).to(ScalarType.BFloat16), w.to(ScalarType.BFloat16)));
    }

    [Fact]
    public void Foreign_inputs_go_to_libtorch()
    {
        var w = randn(16, 32);
        Assert.False(Fp32Kernels.Applies(randn(1, 1, 32).to(ScalarType.BFloat16), w.to(ScalarType.BFloat16))); // bf16: DecodeKernels
        Assert.False(Fp32Kernels.Applies(randn(1, 1, 32), randn(32, 16).t())); // a transposed weight
        Assert.False(Fp32Kernels.Applies(randn(1, 1, 31), w)); // mismatched features
    }

    /// <summary>Within float32 rounding of the float64 product: the sums differ only in order of accumulation.</summary>
    private static void AssertClose(Tensor x, Tensor w, Tensor? b, Tensor ours, long[] shape)
    {
        Assert.Equal(shape, ours.shape);
        Assert.Equal(ScalarType.Float32, ours.dtype);
        using var exact = nn.functional.linear(x.to(ScalarType.Float64), w.to(ScalarType.Float64), b?.to(ScalarType.Float64));
        using var torch32 = nn.functional.linear(x, w, b?.to(ScalarType.Float32));
        var bound = exact.abs() * 1e-5 + 2e-5 * Math.Sqrt(w.shape[1]);
        var diff = (ours.to(ScalarType.Float64) - exact).abs();
        Assert.True(diff.le(bound).all().item<bool>(), $"max diff {diff.max().item<double>()}");
        Assert.True((torch32.to(ScalarType.Float64) - exact).abs().le(bound).all().item<bool>()); // libtorch's own float32 result meets the same bound
    }
}
