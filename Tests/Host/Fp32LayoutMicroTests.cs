using ShardPipe.Host.Bench;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Host;

/// <summary>
/// The k-major candidate of <c>bench decode --layout-micro</c> (not its speed: the benchmark measures that): it computes
/// the products the shipped kernels compute, for every row count its row blocks split into (1–6, and more in sixes), and
/// its own sums are the same bits whatever the number of rows — the property that would let a verification pass equal
/// one-row decode on it.
/// </summary>
public class Fp32LayoutMicroTests
{
    [Fact]
    public void The_candidate_computes_the_shipped_products_and_the_same_bits_for_any_row_count()
    {
        if (!KMajorCandidate.Supported) return; // AVX-512 only, as the benchmark says; the shipped kernels' tests cover the rest
        manual_seed(7);
        using var weight = randn(192, 96) * 0.05;
        using var candidate = KMajorCandidate.Pack(weight);
        using var x = randn(13, 96);
        foreach (int m in new[] { 1, 2, 3, 4, 5, 6, 7, 12, 13 })
        {
            using var rows = x.narrow(0, 0, m).contiguous();
            using var y = empty(m, 192);
            KMajorCandidate.Linear(rows, candidate, y);
            using var shipped = Fp32Kernels.Linear(rows, weight, null);
            Assert.True((y - shipped).abs().max().item<float>() < 1e-5f, $"m = {m}: the candidate's products differ from the shipped kernel's");
            for (int r = 0; r < m; r++)
            {
                using var one = x.narrow(0, r, 1).contiguous();
                using var alone = empty(1, 192);
                KMajorCandidate.Linear(one, candidate, alone);
                var a = alone.data<float>().ToArray();
                var t = y[r].data<float>().ToArray();
                for (int j = 0; j < a.Length; j++)
                    Assert.True(BitConverter.SingleToInt32Bits(a[j]) == BitConverter.SingleToInt32Bits(t[j]), $"row {r} of {m}, column {j}: alone {a[j]:R}, with the others {t[j]:R}");
            }
        }
        using var ragged = randn(100, 96);
        Assert.Throws<ArgumentException>(() => KMajorCandidate.Pack(ragged)); // whole groups of 64 outputs only
    }
}
