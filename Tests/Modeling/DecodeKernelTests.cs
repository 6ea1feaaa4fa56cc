using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>The bf16 matrix-vector kernel equals libtorch's bf16 linear up to bf16 rounding, for every shape it takes.</summary>
public class DecodeKernelTests
{
    [Theory]
    [InlineData(1, 768, 2048, false)]
    [InlineData(1, 2048, 768, true)]
    [InlineData(3, 100, 37, true)]   // odd sizes: the row and column tails
    [InlineData(8, 33, 5, false)]
    [InlineData(6, 96, 301, true)]  // several input rows over several 16-row blocks and parts
    public void The_bf16_kernel_matches_libtorch_linear(int rows, int k, int n, bool bias)
    {
        manual_seed(rows * 1000 + k);
        var w = randn(n, k).to(ScalarType.BFloat16);
        var b = bias ? randn(n).to(ScalarType.BFloat16) : null;
        var x = randn(1, rows, k).to(ScalarType.BFloat16);
        // Without AVX-512 the kernel stands aside and libtorch runs the layer.
        Assert.Equal(System.Runtime.Intrinsics.X86.Avx512F.IsSupported, DecodeKernels.Applies(x, w));
        using var ours = DecodeKernels.LinearBf16(x, w, b);
        using var theirs = nn.functional.linear(x.to(ScalarType.Float32), w.to(ScalarType.Float32), b?.to(ScalarType.Float32));
        Assert.Equal(new long[] { 1, rows, n }, ours.shape);
        Assert.Equal(ScalarType.BFloat16, ours.dtype);
        // float32 accumulation, one rounding to bf16: within one bf16 ulp of the float32 result (relative 2^-8).
        var diff = (ours.to(ScalarType.Float32) - theirs).abs();
        var bound = theirs.abs() * (1.0 / 256) + 1e-3;
        Assert.True(diff.le(bound).all().item<bool>(), $"max diff {diff.max().item<float>()}");
    }

    [Fact]
    public void Long_inputs_go_to_libtorch()
    {
        var w = randn(16, 32).to(ScalarType.BFloat16);
        Assert.False(DecodeKernels.Applies(randn(1, DecodeKernels.MaxRows + 1, 32).to(ScalarType.BFloat16), w));
        Assert.False(DecodeKernels.Applies(randn(1, 1, 32), randn(16, 32))); // float32 stays with libtorch
    }
}

/// <summary>The one-pass RMSNorm equals Llama's RMSNorm written out in libtorch ops.</summary>
public class RmsNormKernelTests
{
    [Theory]
    [InlineData(ScalarType.Float32, 1e-6)]
    [InlineData(ScalarType.BFloat16, 1e-2)]
    public void One_pass_rms_norm_equals_the_libtorch_ops(ScalarType dtype, double tolerance)
    {
        manual_seed(7);
        var x = (randn(1, 3, 768) * 3).to(dtype);
        var w = (randn(768) * 0.1 + 1).to(dtype);
        Assert.True(DecodeKernels.RmsNormApplies(x, w));
        using var ours = DecodeKernels.RmsNorm(x, w, 1e-6);
        var h = x.to(ScalarType.Float32);
        h = h * rsqrt(h.pow(2).mean(new long[] { -1 }, keepdim: true) + 1e-6);
        using var theirs = w * h.to(dtype);
        double diff = (ours.to(ScalarType.Float64) - theirs.to(ScalarType.Float64)).abs().max().item<double>();
        Assert.True(diff <= tolerance * 4, $"max diff {diff}");
    }
}

/// <summary>The one-pass rotary embedding equals the libtorch form (x·cos + rotate_half(x)·sin) exactly, in both dtypes.</summary>
public class RotaryKernelTests
{
    [Theory]
    [InlineData(ScalarType.Float32, 3, 12, 1, 64)]  // a merged decode step: N rows, one position each
    [InlineData(ScalarType.BFloat16, 1, 4, 1, 64)]
    [InlineData(ScalarType.Float32, 2, 3, 4, 10)]   // two rows of four positions, an odd half
    [InlineData(ScalarType.BFloat16, 1, 5, 8, 6)]
    public void One_pass_rotary_equals_the_libtorch_ops(ScalarType dtype, int b, int h, int t, int d)
    {
        manual_seed(b * 100 + h * 10 + t + d);
        var x = (randn(b, h, t, d) * 4).to(dtype);
        var angles = rand(b, t, d) * 6;
        var cos = angles.cos().to(dtype);
        var sin = angles.sin().to(dtype);
        Assert.True(DecodeKernels.RotaryApplies(x, cos, sin));
        using var ours = DecodeKernels.Rotary(x, cos, sin);
        var x1 = x.narrow(-1, 0, d / 2);
        var x2 = x.narrow(-1, d / 2, d / 2);
        using var theirs = x * cos.unsqueeze(1) + cat(new[] { -x2, x1 }, -1) * sin.unsqueeze(1);
        Assert.Equal(theirs.shape, ours.shape);
        Assert.Equal(dtype, ours.dtype);
        Assert.True(ours.eq(theirs).all().item<bool>(), $"max diff {(ours.to(ScalarType.Float64) - theirs.to(ScalarType.Float64)).abs().max().item<double>()}");
        using var viaApply = ShardPipe.Modeling.Layers.RotaryEmbedding.Apply(x, cos, sin);
        Assert.True(viaApply.eq(theirs).all().item<bool>());
    }

    [Fact]
    public void Long_or_strided_inputs_take_the_libtorch_form()
    {
        int positions = ShardPipe.Modeling.Layers.StepKernels.MaxRows + 1;
        var cos = randn(1, positions, 8);
        Assert.False(DecodeKernels.RotaryApplies(randn(1, 2, positions, 8), cos, cos)); // prefill past the step kernels' rows
        var fits = randn(1, positions - 1, 8);
        Assert.True(DecodeKernels.RotaryApplies(randn(1, 2, positions - 1, 8), fits, fits)); // the last row count the kernel takes
        var wide = randn(1, 2, 1, 16);
        Assert.False(DecodeKernels.RotaryApplies(wide.narrow(-1, 0, 8), randn(1, 1, 8), randn(1, 1, 8))); // Phi's partial rotary slice
        Assert.False(DecodeKernels.RotaryApplies(randn(1, 2, 1, 8), randn(1, 1, 8).to(ScalarType.BFloat16), randn(1, 1, 8))); // mixed dtypes
    }
}
