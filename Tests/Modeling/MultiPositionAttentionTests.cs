using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// Segments of a few positions per row (a speculative verification: the last token and its drafts) attend through
/// <see cref="DecodeAttention"/> with causal order inside the segment, together with plain decode rows of other requests.
/// Every position's logits must equal those of libtorch's per-request attention (<see cref="RaggedBatch.BatchedDecode"/>
/// off) and of the whole sequence run alone, within the tolerance, for every family; after a rollback
/// (<see cref="KvCache.Truncate"/>, rejected drafts) the next segment overwrites the dropped positions. A wrong causal
/// bound, mask row, cache position or query row changes some position's logits.
/// </summary>
public class MultiPositionAttentionTests
{
    private sealed class Request(long[][] ids, long[][] mask)
    {
        public long[][] Ids = ids, Mask = mask;
        public readonly KvCache Cache = new();
        public long[][] Positions => DecodeRule.PositionsFromMask(Mask);
    }

    /// <summary>One step of every request as one ragged batch; each request's logits at every new position (B·T, V).</summary>
    private static List<Tensor> Step(CausalLMModel model, IReadOnlyList<Request> requests, IReadOnlyList<long[][]> ids, bool batched, out int taken)
    {
        var hidden = requests.Select((r, i) => model.Embed(IdRows.ToTensor(ids[i]), IdRows.ToTensor(Tail(r.Positions, ids[i][0].Length)))).ToList();
        var inputs = requests.Select((r, i) => model.PrepareLayerInputs(IdRows.ToTensor(Tail(r.Positions, ids[i][0].Length)), IdRows.ToTensor(r.Mask),
            r.Cache.SeenTokens(0), ids[i][0].Length, hidden[i].dtype, CPU, r.Cache, 0)).ToList();
        var batch = new RaggedBatch(requests.Select((r, i) => ((long)ids[i].Length, (long)ids[i][0].Length, inputs[i]))) { BatchedDecode = batched };
        taken = batch.DecodeSegments.Count;
        var flat = cat(hidden.Select(h => h.reshape(-1, h.shape[2])).ToArray(), 0);
        for (int l = 0; l < model.NumLayers; l++) flat = model.Layer(l, flat, batch);
        var logits = model.Project(model.FinalNorm(flat)).to(ScalarType.Float32);
        foreach (var li in inputs) li.Dispose();
        return batch.Segments.Select(s => logits.narrow(0, s.Offset, s.Count)).ToList();
    }

    private static long[][] Tail(long[][] positions, int t) => positions.Select(p => p[^t..]).ToArray();

    public static IEnumerable<object[]> Models() => BatchedDecodeAttentionTests.Models();

    [Theory]
    [MemberData(nameof(Models))]
    public void Verification_segments_attend_together_with_decode_rows_as_each_alone(string set, string name, double tolerance)
    {
        var model = PreTrainedModel.FromPretrained(set == "models" ? TestPaths.Model(name) : Path.Combine(TestPaths.Families, name));
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            long vocab = model.VocabSize;
            long[] Prompt(int length, int seed) => Enumerable.Range(0, length).Select(i => (long)((i * 31 + seed * 17 + 5) % vocab)).ToArray();
            // Pasts 1 to 62: 62 + 5 outgrows a cache buffer's first 64 positions inside the segment; a short prompt of
            // 4 positions is itself a segment of this path (no past); one left-padded request of two rows.
            int[] lengths = { 1, 4, 9, 30, 62 };
            List<Request> Requests()
            {
                var list = lengths.Select((n, i) => new Request(new[] { Prompt(n, i) }, DecodeRule.FullMask(new[] { Prompt(n, i) }))).ToList();
                var padded = new[] { Prompt(12, 20), new long[] { 0, 0, 0, 0, 0 }.Concat(Prompt(7, 21)).ToArray() };
                list.Insert(2, new Request(padded, new[] { Enumerable.Repeat(1L, 12).ToArray(), new long[] { 0, 0, 0, 0, 0 }.Concat(Enumerable.Repeat(1L, 7)).ToArray() }));
                return list;
            }
            var batched = Requests();
            var separate = Requests();
            Step(model, batched, batched.Select(r => r.Ids).ToList(), true, out _);
            Step(model, separate, separate.Select(r => r.Ids).ToList(), false, out _);
            // Steps of 5, 1, 3 and 8 positions per request (request i takes a decode row of 1 on odd i at step 0), with a
            // rollback of two positions after the first: the next segment writes over the dropped drafts.
            int[] widths = { 5, 1, 3, DecodeAttention.MaxPositions };
            for (int step = 0; step < widths.Length; step++)
            {
                var next = batched.Select((r, i) =>
                {
                    int t = step == 0 && i % 2 == 1 ? 1 : widths[step];
                    return r.Ids.Select((_, b) => Enumerable.Range(0, t).Select(j => (long)((i * 7 + b * 3 + step * 11 + j * 5 + 2) % vocab)).ToArray()).ToArray();
                }).ToList();
                foreach (var reqs in new[] { batched, separate })
                    for (int i = 0; i < reqs.Count; i++)
                    {
                        var r = reqs[i];
                        int t = next[i][0].Length;
                        r.Mask = r.Mask.Select(m => m.Concat(Enumerable.Repeat(1L, t)).ToArray()).ToArray();
                        r.Ids = r.Ids.Select((row, b) => row.Concat(next[i][b]).ToArray()).ToArray();
                    }
                var together = Step(model, batched, next, true, out int taken);
                var apart = Step(model, separate, next, false, out int none);
                Assert.Equal(batched.Count, taken); // every segment, of 1 to 8 positions, took the kernel
                Assert.Equal(0, none);
                for (int i = 0; i < batched.Count; i++)
                {
                    double diff = together[i].sub(apart[i]).abs().max().item<float>();
                    Assert.True(diff <= tolerance, $"{name}, step {step}, request {i}: logits of a {next[i][0].Length}-position segment differ from per-request attention by {diff}");
                    if (batched[i].Ids.Length > 1) continue;
                    int width = next[i][0].Length;
                    var alone = model.Forward(IdRows.ToTensor(batched[i].Ids)).select(0, 0).to(ScalarType.Float32);
                    double whole = together[i].sub(alone.narrow(0, alone.shape[0] - width, width)).abs().max().item<float>();
                    Assert.True(whole <= tolerance, $"{name}, step {step}, request {i}: segment logits differ from the whole sequence run alone by {whole}");
                }
                if (step == 0)
                    foreach (var reqs in new[] { batched, separate })
                        foreach (var r in reqs.Where(r => r.Ids[0].Length > 2 && r.Ids.Length == 1 && next[reqs.IndexOf(r)][0].Length > 1))
                        {
                            // Two drafts rejected: the cache and the sequence lose the last two positions.
                            r.Cache.Truncate(r.Cache.SeenTokens(0) - 2);
                            r.Ids = r.Ids.Select(row => row[..^2]).ToArray();
                            r.Mask = r.Mask.Select(m => m[..^2]).ToArray();
                        }
            }
            foreach (var r in batched.Concat(separate)) r.Cache.Dispose();
        }
        finally { model.Release(); }
    }

    [Fact]
    public void Segments_longer_than_the_kernel_takes_go_to_the_per_request_path()
    {
        using var cache = new KvCache();
        LayerInputs Inputs(long t) => new() { PositionIds = zeros(1, t, ScalarType.Int64), Cache = cache, Mask = zeros(1, 1, t, t) };
        using var few = Inputs(DecodeAttention.MaxPositions);
        using var many = Inputs(DecodeAttention.MaxPositions + 1);
        Assert.True(DecodeAttention.Takes(new RaggedBatch.Segment(1, DecodeAttention.MaxPositions, few, 0)));
        Assert.False(DecodeAttention.Takes(new RaggedBatch.Segment(1, DecodeAttention.MaxPositions + 1, many, 0)));
        // A padding mask broadcast over the positions (GPT-2's (B, 1, 1, Tk)) is taken; one of another query length or row count is not.
        using var broadcast = new LayerInputs { PositionIds = zeros(1, 3, ScalarType.Int64), Cache = cache, Mask = zeros(1, 1, 1, 3) };
        Assert.True(DecodeAttention.Takes(new RaggedBatch.Segment(1, 3, broadcast, 0)));
        using var otherLength = new LayerInputs { PositionIds = zeros(1, 3, ScalarType.Int64), Cache = cache, Mask = zeros(1, 1, 2, 3) };
        Assert.False(DecodeAttention.Takes(new RaggedBatch.Segment(1, 3, otherLength, 0)));
        using var otherRows = new LayerInputs { PositionIds = zeros(2, 3, ScalarType.Int64), Cache = cache, Mask = zeros(1, 1, 3, 3) };
        Assert.False(DecodeAttention.Takes(new RaggedBatch.Segment(2, 3, otherRows, 0)));
        using var noCache = new LayerInputs { PositionIds = zeros(1, 3, ScalarType.Int64), Mask = zeros(1, 1, 3, 3) };
        Assert.False(DecodeAttention.Takes(new RaggedBatch.Segment(1, 3, noCache, 0)));
    }
}
