using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// The one-pass step kernels equal the libtorch forms they replace: the residual add fused with RMSNorm, rotary
/// embedding, the greedy argmax, and bf16 rounding. Widths that are and are not multiples of the vector width (the
/// vector body and the scalar tail), float32 exactly or to float rounding, bf16 to the bit where libtorch rounds the same ops.
/// </summary>
public class StepKernelTests
{
    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Theory]
    [InlineData(ScalarType.Float32, 1, 768)]
    [InlineData(ScalarType.Float32, 5, 37)]
    [InlineData(ScalarType.BFloat16, 1, 768)]
    [InlineData(ScalarType.BFloat16, 3, 100)]
    public void Fused_add_and_rms_norm_equal_the_libtorch_ops(ScalarType dtype, int rows, int d)
    {
        manual_seed(rows * 100 + d);
        var x = (randn(rows, d) * 3).to(dtype);
        var delta = randn(rows, d).to(dtype);
        var w = (randn(d) * 0.1 + 1).to(dtype);
        Assert.True(StepKernels.AddRmsNormApplies(x, delta, w));
        using var normed = StepKernels.AddRmsNorm(x, delta, w, 1e-6, out var sum);
        using var expectedSum = x + delta;
        var h = expectedSum.to(ScalarType.Float32);
        h = h * rsqrt(h.pow(2).mean(new long[] { -1 }, keepdim: true) + 1e-6);
        using var expected = w * h.to(dtype);
        Assert.True(Same(sum, expectedSum), "the residual sum differs from x + delta");
        double diff = (normed.to(ScalarType.Float64) - expected.to(ScalarType.Float64)).abs().max().item<double>();
        // float32: a few float ulps of the reduction order; bf16: at most one bf16 ulp (a rounding the other side of a tie).
        double bound = dtype == ScalarType.Float32 ? 1e-5 : expected.to(ScalarType.Float64).abs().max().item<double>() / 128;
        Assert.True(diff <= bound, $"max diff {diff}");
        using var alone = StepKernels.RmsNorm(expectedSum, w, 1e-6);
        Assert.True(Same(alone, normed), "RMSNorm alone differs from the fused kernel");
        sum.Dispose();
    }

    [Fact]
    public void The_module_fused_path_equals_the_unfused_one()
    {
        var norm = new RmsNorm("LlamaRMSNorm", 64, 1e-5);
        manual_seed(3);
        using var weight = randn(64);
        norm.Weight.Set(weight.clone());
        var x = randn(2, 64);
        var delta = randn(2, 64);
        using var fused = norm.ForwardAdd(x, delta, out var sum);
        // A row count the kernel does not take goes through x + delta and the libtorch norm.
        var xs = randn(StepKernels.MaxRows + 1, 64);
        var ds = randn(StepKernels.MaxRows + 1, 64);
        Assert.False(StepKernels.AddRmsNormApplies(xs, ds, norm.Weight.Tensor));
        using var unfused = norm.ForwardAdd(xs, ds, out var sum2);
        Assert.True(Same(sum2, xs + ds));
        Assert.True(Same(sum, x + delta));
        var h = sum * rsqrt(sum.pow(2).mean(new long[] { -1 }, keepdim: true) + 1e-5) * weight;
        Assert.True((fused - h).abs().max().item<float>() < 1e-5);
        var h2 = sum2 * rsqrt(sum2.pow(2).mean(new long[] { -1 }, keepdim: true) + 1e-5) * weight;
        Assert.True((unfused - h2).abs().max().item<float>() < 1e-5);
    }

    [Theory]
    [InlineData(ScalarType.Float32, 1, 12, 1, 64)]
    [InlineData(ScalarType.Float32, 5, 4, 1, 20)]  // half 10: a vector and a tail
    [InlineData(ScalarType.BFloat16, 1, 12, 1, 64)]
    [InlineData(ScalarType.BFloat16, 2, 3, 3, 36)]
    public void Rotary_equals_the_libtorch_form(ScalarType dtype, int b, int h, int t, int d)
    {
        manual_seed(b * 1000 + d);
        var x = randn(b, h, t, d).to(dtype);
        var cos = randn(b, t, d).to(dtype);
        var sin = randn(b, t, d).to(dtype);
        using var ours = StepKernels.Rotary(x, cos, sin);
        long half = d / 2;
        var rotated = cat(new[] { -x.narrow(-1, half, half), x.narrow(-1, 0, half) }, -1);
        using var theirs = x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
        Assert.True(Same(ours, theirs), $"max diff {(ours.to(ScalarType.Float32) - theirs.to(ScalarType.Float32)).abs().max().item<float>()}");
    }

    [Theory]
    [InlineData(ScalarType.Float32, 1, 12, 12, 64)]
    [InlineData(ScalarType.Float32, 7, 6, 2, 22)]   // grouped-query keys; half 11: a vector and a tail
    [InlineData(ScalarType.BFloat16, 1, 12, 12, 64)]
    [InlineData(ScalarType.BFloat16, 64, 4, 1, 36)] // a merged step's most rows
    public void Rotary_of_queries_and_keys_together_equals_the_libtorch_form(ScalarType dtype, int n, int heads, int kvHeads, int d)
    {
        manual_seed(n * 100 + d);
        var q = randn(n, heads * d).to(dtype);
        var k = randn(n, kvHeads * d).to(dtype);
        var cos = randn(n, 1, d).to(dtype);
        var sin = randn(n, 1, d).to(dtype);
        Assert.True(StepKernels.RotaryPairApplies(q, k, cos, sin, d));
        var (qOurs, kOurs) = RotaryEmbedding.ApplyPair(q, heads, k, kvHeads, d, cos, sin);
        Tensor Theirs(Tensor flat, int h)
        {
            var x = flat.view(n, h, 1, d);
            long half = d / 2;
            var rotated = cat(new[] { -x.narrow(-1, half, half), x.narrow(-1, 0, half) }, -1);
            return (x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)).reshape(n, h * d);
        }
        Assert.True(Same(qOurs, Theirs(q, heads)), "queries");
        Assert.True(Same(kOurs, Theirs(k, kvHeads)), "keys");
        // Inputs the kernel does not take (more rows than a step's, an odd head width) go through libtorch, same values.
        var many = randn(StepKernels.MaxRows + 1, heads * d).to(dtype);
        var manyCos = randn(StepKernels.MaxRows + 1, 1, d).to(dtype);
        var manySin = randn(StepKernels.MaxRows + 1, 1, d).to(dtype);
        Assert.False(StepKernels.RotaryPairApplies(many, many, manyCos, manySin, d));
        var (qLib, _) = RotaryEmbedding.ApplyPair(many, heads, many, heads, d, manyCos, manySin);
        Assert.Equal(new long[] { StepKernels.MaxRows + 1, heads, 1, d }, qLib.shape);
        Assert.False(StepKernels.RotaryPairApplies(q, k, cos, sin, d - 1));
    }

    [Fact]
    public void Argmax_equals_libtorch_with_ties_infinities_and_nan()
    {
        manual_seed(11);
        foreach (int v in new[] { 1, 7, 16, 31999, 32000 })
        {
            var logits = randn(3, v);
            if (v > 5)
            {
                logits[0, 3] = tensor(100f);
                logits[0, v - 1] = tensor(100f); // a tie: the first wins
                logits[1, v - 2] = tensor(float.PositiveInfinity);
                logits[2, v / 2] = tensor(float.NaN); // NaN counts as the largest
                logits[2, v - 1] = tensor(float.PositiveInfinity);
            }
            Assert.Equal(logits.argmax(-1).data<long>().ToArray(), StepKernels.Argmax(logits));
        }
        var allNegInf = full(1, 40, float.NegativeInfinity);
        Assert.Equal(allNegInf.argmax(-1).data<long>().ToArray(), StepKernels.Argmax(allNegInf));
        // The greedy sampler takes it.
        using var sampler = new Sampler(greedy: true);
        var row = randn(2, 1000);
        Assert.Equal(row.argmax(-1).data<long>().ToArray(), sampler.Next(row));
    }

    [Fact]
    public void Argmax_finds_the_first_maximum_in_every_lane_vector_and_the_tail()
    {
        // The index search runs a vector of lanes at a time, then the tail: a maximum (or NaN) at every position of
        // the first vectors and of the tail, alone or tied with a later one across a vector boundary.
        int w = System.Numerics.Vector<float>.Count, v = 4 * w + 3;
        manual_seed(12);
        var baseRow = rand(1, v); // values in [0, 1)
        for (int at = 0; at < v; at++)
        {
            var alone = baseRow.clone();
            alone[0, at] = tensor(2f);
            var tied = alone.clone();
            tied[0, Math.Min(v - 1, at + w)] = tensor(2f);
            var nan = baseRow.clone();
            nan[0, at] = tensor(float.NaN);
            nan[0, v - 1] = tensor(float.NaN);
            foreach (var logits in new[] { alone, tied, nan })
                Assert.Equal(logits.argmax(-1).data<long>().ToArray(), StepKernels.Argmax(logits));
        }
    }

    [Fact]
    public void Bf16_rounding_equals_libtorch_to_the_bit()
    {
        manual_seed(5);
        // Values across magnitudes, exact ties (odd and even), infinities and NaN.
        var x = cat(new[]
        {
            randn(1000) * 1e3, randn(1000) * 1e-30,
            tensor(new[] { 1.00390625f, 1.01171875f, -1.00390625f, float.PositiveInfinity, float.NegativeInfinity, float.NaN, 0f, -0f, 3.4e38f, 1e-45f }),
        });
        var theirs = x.to(ScalarType.BFloat16);
        var ours = empty(x.shape, ScalarType.BFloat16);
        unsafe
        {
            var src = x.data<float>().ToArray();
            fixed (float* sp = src)
            {
                StepKernels.Narrow(sp, (byte*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(ours.bytes)), bf16: true, src.Length);
                var back = new float[src.Length];
                fixed (float* bp = back)
                {
                    StepKernels.Widen((byte*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(ours.bytes)), bf16: true, bp, back.Length);
                    StepKernels.RoundBf16(sp, src.Length);
                    for (int i = 0; i < back.Length; i++)
                        Assert.True(back[i].Equals(sp[i]), $"element {i}: widened {back[i]}, rounded in place {sp[i]}");
                }
            }
        }
        Assert.True(Same(ours.isnan(), theirs.isnan()), "NaN where libtorch has none, or the other way");
        Assert.True(Same(ours.nan_to_num(), theirs.nan_to_num()), "a value rounds differently from libtorch's");
    }
}
