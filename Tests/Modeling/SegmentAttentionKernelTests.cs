using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Models;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// <see cref="DecodeAttention.Run"/> on segments of several positions per row (one task per row and head over all its
/// positions, DecodeAttentionSegments.cs), on random q, k, v of random shapes: past 0 and > 0 (one past a cache buffer's
/// first 64 positions), grouped-query heads, float32, bf16 and float16, head sizes that take the bf16 in-register path
/// and one that does not. Each segment's output must equal libtorch's scaled-dot-product attention over the cache with
/// causal order (and, where given, the segment's mask), and — with no mask — equal bit for bit the same positions run
/// one after another as decode rows of their own (the one-position task): a verification pass's positions compute what
/// plain steps compute. A wrong causal bound, kv head, query row or cache position changes some output.
/// </summary>
public class SegmentAttentionKernelTests
{
    private static LayerInputs Inputs(KvCache cache, long rows, long tokens, Tensor? mask = null) =>
        new() { PositionIds = zeros(rows, tokens, ScalarType.Int64), Cache = cache, Mask = mask };

    /// <summary>A cache holding <paramref name="past"/> random positions of layer 0, and the same keys and values (B, kv, past, hd).</summary>
    private static (KvCache Cache, Tensor K, Tensor V) Past(long rows, int kvHeads, int hd, long past, ScalarType dtype, Generator g)
    {
        var cache = new KvCache();
        var k = randn(new[] { rows, kvHeads, past, (long)hd }, generator: g).to(dtype);
        var v = randn(new[] { rows, kvHeads, past, (long)hd }, generator: g).to(dtype);
        if (past > 0) cache.Update(0, k, v);
        return (cache, k, v);
    }

    /// <summary>libtorch's attention of a (B, T) segment over its cache: q (B·T, heads·hd), keys and values (B, kv, Tk, hd), additive mask (B, 1, T, Tk).</summary>
    private static Tensor Reference(Tensor q, Tensor keys, Tensor values, Tensor mask, long rows, long tokens, int heads, int kvHeads, int hd)
    {
        var qh = q.to(ScalarType.Float32).view(rows, tokens, heads, hd).transpose(1, 2);
        var k = keys.to(ScalarType.Float32).repeat_interleave(heads / kvHeads, dim: 1);
        var v = values.to(ScalarType.Float32).repeat_interleave(heads / kvHeads, dim: 1);
        return nn.functional.scaled_dot_product_attention(qh, k, v, mask.to(ScalarType.Float32)).transpose(1, 2).reshape(rows * tokens, (long)heads * hd);
    }

    public static IEnumerable<object[]> Cases() => new[]
    {
        new object[] { ScalarType.Float32, 4, 4, 64, 1e-5 }, new object[] { ScalarType.Float32, 8, 2, 32, 1e-5 }, new object[] { ScalarType.Float32, 6, 3, 24, 1e-5 },
        new object[] { ScalarType.BFloat16, 4, 2, 64, 2e-2 }, new object[] { ScalarType.BFloat16, 4, 4, 24, 2e-2 }, new object[] { ScalarType.Float16, 6, 2, 32, 5e-3 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_segment_attends_as_libtorch_and_bit_for_bit_as_its_positions_one_by_one(ScalarType dtype, int heads, int kvHeads, int hd, double tolerance)
    {
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)(1234 + heads * 7 + hd));
        var shape = new DecodeAttention.Shape(heads, kvHeads, hd, 1.0 / Math.Sqrt(hd));
        var random = new Random(heads * 31 + hd);
        foreach (long past in new long[] { 0, 1, 37, 62, 200 })
        {
            int tokens = past == 62 ? DecodeAttention.MaxPositions : random.Next(2, DecodeAttention.MaxPositions + 1); // 62 + 8 outgrows the first buffer inside the segment
            var (segmentCache, k0, v0) = Past(1, kvHeads, hd, past, dtype, g);
            var (rowCache, _, _) = Past(1, kvHeads, hd, 0, dtype, g);
            if (past > 0) rowCache.Update(0, k0, v0);
            var q = randn(new[] { (long)tokens, (long)heads * hd }, generator: g).to(dtype);
            var k = randn(new[] { (long)tokens, (long)kvHeads * hd }, generator: g).to(dtype);
            var v = randn(new[] { (long)tokens, (long)kvHeads * hd }, generator: g).to(dtype);

            var together = empty(tokens, (long)heads * hd, dtype);
            using (var inputs = Inputs(segmentCache, 1, tokens))
            {
                var segment = new RaggedBatch.Segment(1, tokens, inputs, 0);
                Assert.True(DecodeAttention.Takes(segment));
                DecodeAttention.Run(0, q, k, v, shape, new[] { segment }, together);
            }
            Assert.Equal(past + tokens, segmentCache.SeenTokens(0));

            var oneByOne = empty(tokens, (long)heads * hd, dtype);
            for (int t = 0; t < tokens; t++)
            {
                using var inputs = Inputs(rowCache, 1, 1);
                var row = empty(1, (long)heads * hd, dtype);
                DecodeAttention.Run(0, q.narrow(0, t, 1), k.narrow(0, t, 1), v.narrow(0, t, 1), shape, new[] { new RaggedBatch.Segment(1, 1, inputs, 0) }, row);
                oneByOne.narrow(0, t, 1).copy_(row);
            }
            Assert.True(together.bytes.SequenceEqual(oneByOne.bytes), $"{dtype}, {heads}/{kvHeads} heads of {hd}, past {past}, {tokens} positions: the segment's output is not bit for bit its positions' as decode rows");

            var (keys, values) = segmentCache.Read(0, 0, past + tokens);
            using var causal = AttentionMask.Build(null, 1, tokens, past, null, ScalarType.Float32, CPU, out _)!;
            var expected = Reference(q, keys, values, causal, 1, tokens, heads, kvHeads, hd);
            double diff = together.to(ScalarType.Float32).sub(expected).abs().max().item<float>();
            Assert.True(diff <= tolerance, $"{dtype}, {heads}/{kvHeads} heads of {hd}, past {past}, {tokens} positions: differs from libtorch's attention by {diff}");
            segmentCache.Dispose();
            rowCache.Dispose();
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Mixed_steps_of_decode_rows_and_masked_segments_attend_as_libtorch(ScalarType dtype, int heads, int kvHeads, int hd, double tolerance)
    {
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)(99 + hd));
        var shape = new DecodeAttention.Shape(heads, kvHeads, hd, 1.0 / Math.Sqrt(hd));
        // A decode row (past 40), a 5-position segment with no mask (past 200), two rows of 3 positions with a per-position
        // mask whose second row is left-padded by 4 (past 10), and one row of 4 positions under a padding mask broadcast
        // over its positions (GPT-2's (B, 1, 1, Tk): causal order added by the kernel; past 0).
        var parts = new (long Rows, long Tokens, long Past, int Masked)[] { (1, 1, 40, 0), (1, 5, 200, 0), (2, 3, 10, 1), (1, 4, 0, 2) };
        var caches = new List<(KvCache Cache, LayerInputs Inputs, Tensor Mask)>();
        foreach (var (rows, tokens, past, masked) in parts)
        {
            var (cache, _, _) = Past(rows, kvHeads, hd, past, dtype, g);
            Tensor full; // the additive mask the reference uses, (B, 1, T, Tk)
            Tensor? given = null;
            if (masked == 1)
            {
                var mask2d = ones(rows, past + tokens, ScalarType.Int64);
                mask2d[1].narrow(0, 0, 4).fill_(0);
                given = AttentionMask.Build(mask2d, rows, tokens, past, null, dtype, CPU, out _)!;
                full = given.to(ScalarType.Float32);
            }
            else full = AttentionMask.Build(null, rows, tokens, past, null, ScalarType.Float32, CPU, out _) ?? zeros(rows, 1, tokens, past + tokens);
            if (masked == 2) given = zeros(new[] { rows, 1, 1, past + tokens }, dtype);
            caches.Add((cache, Inputs(cache, rows, tokens, given), full));
        }
        var batch = new RaggedBatch(parts.Select((p, i) => (p.Rows, p.Tokens, caches[i].Inputs)));
        Assert.Equal(parts.Length, batch.DecodeSegments.Count);
        long n = batch.TotalTokens;
        var q = randn(new[] { n, (long)heads * hd }, generator: g).to(dtype);
        var k = randn(new[] { n, (long)kvHeads * hd }, generator: g).to(dtype);
        var v = randn(new[] { n, (long)kvHeads * hd }, generator: g).to(dtype);
        var output = empty(n, (long)heads * hd, dtype);
        DecodeAttention.Run(0, q, k, v, shape, batch.Segments, output);
        for (int i = 0; i < parts.Length; i++)
        {
            var s = batch.Segments[i];
            var (keys, values) = caches[i].Cache.Read(0, 0, parts[i].Past + parts[i].Tokens);
            var expected = Reference(q.narrow(0, s.Offset, s.Count), keys, values, caches[i].Mask, s.Rows, s.Tokens, heads, kvHeads, hd);
            double diff = output.narrow(0, s.Offset, s.Count).to(ScalarType.Float32).sub(expected).abs().max().item<float>();
            Assert.True(diff <= tolerance, $"{dtype}, {heads}/{kvHeads} heads of {hd}: segment {i} ({s.Rows}×{s.Tokens}, past {parts[i].Past}) differs from libtorch's attention by {diff}");
        }
        foreach (var (cache, inputs, _) in caches)
        {
            inputs.Dispose();
            cache.Dispose();
        }
    }
}
