using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// A merged step's decode rows attend in one call (<see cref="DecodeAttention"/>) over each request's own cache, read in
/// place. Many requests of different past lengths (one past a cache buffer's doubling, one of two left-padded rows, the
/// sliding window outgrown) decode together for a few steps; every request's logits must equal those of libtorch's
/// per-request attention (<see cref="RaggedBatch.BatchedDecode"/> off) and of its whole sequence run alone, within 1e-4.
/// A wrong row offset, kv head, cache position or mask row changes some request's logits.
/// </summary>
public class BatchedDecodeAttentionTests
{
    private sealed class Request(long[][] ids, long[][] mask)
    {
        public long[][] Ids = ids, Mask = mask;
        public readonly KvCache Cache = new();
        public long[][] Positions => DecodeRule.PositionsFromMask(Mask);
    }

    /// <summary>One step of every request through all layers as one ragged batch; each request's last-position logits (B, V).</summary>
    private static List<Tensor> Step(CausalLMModel model, IReadOnlyList<Request> requests, IReadOnlyList<long[][]> ids, bool batched, out int decodeSegments)
    {
        var hidden = requests.Select((r, i) => model.Embed(IdRows.ToTensor(ids[i]), IdRows.ToTensor(Tail(r.Positions, ids[i][0].Length)))).ToList();
        var inputs = requests.Select((r, i) => model.PrepareLayerInputs(IdRows.ToTensor(Tail(r.Positions, ids[i][0].Length)), IdRows.ToTensor(r.Mask),
            r.Cache.SeenTokens(0), ids[i][0].Length, hidden[i].dtype, CPU, r.Cache, 0)).ToList();
        var batch = new RaggedBatch(requests.Select((r, i) => ((long)ids[i].Length, (long)ids[i][0].Length, inputs[i]))) { BatchedDecode = batched };
        decodeSegments = batch.DecodeSegments.Count;
        var flat = cat(hidden.Select(h => h.reshape(-1, h.shape[2])).ToArray(), 0);
        for (int l = 0; l < model.NumLayers; l++) flat = model.Layer(l, flat, batch);
        var logits = model.Project(model.FinalNorm(flat.index_select(0, tensor(batch.LastPositions())))).to(ScalarType.Float32);
        foreach (var li in inputs) li.Dispose();
        long row = 0;
        return ids.Select(x => { var y = logits.narrow(0, row, x.Length); row += x.Length; return y; }).ToList();
    }

    private static long[][] Tail(long[][] positions, int t) => positions.Select(p => p[^t..]).ToArray();

    public static IEnumerable<object[]> Models() => new[]
    {
        new object[] { "models", "llama_untied", 1e-4 }, new object[] { "models", "mistral_window", 1e-4 }, new object[] { "models", "qwen2", 1e-4 },
        new object[] { "models", "gpt2", 1e-4 }, new object[] { "families", "phi", 1e-4 }, new object[] { "families", "gemma", 1e-4 },
        new object[] { "families", "mixtral_sliding", 1e-4 }, new object[] { "models", "llama_bf16", 5e-2 },
    };

    [Theory]
    [MemberData(nameof(Models))]
    public void Decode_rows_of_many_requests_attend_together_as_each_alone(string set, string name, double tolerance)
    {
        var model = PreTrainedModel.FromPretrained(set == "models" ? TestPaths.Model(name) : Path.Combine(TestPaths.Families, name));
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            long vocab = model.VocabSize;
            long[] Prompt(int length, int seed) => Enumerable.Range(0, length).Select(i => (long)((i * 31 + seed * 17 + 5) % vocab)).ToArray();
            // Past lengths 1 to 64: 63 and 64 fill and outgrow a cache buffer's first 64 positions within the steps.
            int[] lengths = { 1, 5, 9, 17, 30, 63, 64 };
            List<Request> Requests()
            {
                var list = lengths.Select((n, i) => new Request(new[] { Prompt(n, i) }, DecodeRule.FullMask(new[] { Prompt(n, i) }))).ToList();
                var padded = new[] { Prompt(12, 20), new long[] { 0, 0, 0, 0, 0 }.Concat(Prompt(7, 21)).ToArray() };
                list.Insert(3, new Request(padded, new[] { Enumerable.Repeat(1L, 12).ToArray(), new long[] { 0, 0, 0, 0, 0 }.Concat(Enumerable.Repeat(1L, 7)).ToArray() }));
                return list;
            }
            var batched = Requests();
            var separate = Requests();
            // Prompts first (each segment of several positions attends on its own either way), then three decode steps.
            Step(model, batched, batched.Select(r => r.Ids).ToList(), true, out _);
            Step(model, separate, separate.Select(r => r.Ids).ToList(), false, out _);
            for (int step = 0; step < 3; step++)
            {
                var next = batched.Select((r, i) => r.Ids.Select((_, b) => new[] { (long)((i * 7 + b * 3 + step * 11 + 2) % vocab) }).ToArray()).ToList();
                foreach (var set2 in new[] { batched, separate })
                    foreach (var (r, i) in set2.Select((r, i) => (r, i)))
                    {
                        r.Mask = DecodeRule.Advance(r.Mask).Mask;
                        r.Ids = r.Ids.Select((row, b) => row.Append(next[i][b][0]).ToArray()).ToArray();
                    }
                var together = Step(model, batched, next, true, out int decodeSegments);
                var apart = Step(model, separate, next, false, out int none);
                Assert.Equal(batched.Count, decodeSegments); // every request took the batched path
                Assert.Equal(0, none);
                for (int i = 0; i < batched.Count; i++)
                {
                    double diff = together[i].sub(apart[i]).abs().max().item<float>();
                    Assert.True(diff <= tolerance, $"{name}, step {step}, request {i} (past {batched[i].Cache.SeenTokens(0) - 1}): batched logits differ from per-request attention by {diff}");
                    if (batched[i].Ids.Length > 1) continue;
                    var alone = model.Forward(IdRows.ToTensor(batched[i].Ids), lastOnly: true).select(1, 0).to(ScalarType.Float32);
                    double whole = together[i].sub(alone).abs().max().item<float>();
                    Assert.True(whole <= tolerance, $"{name}, step {step}, request {i}: batched logits differ from the whole sequence run alone by {whole}");
                }
            }
            foreach (var r in batched.Concat(separate)) r.Cache.Dispose();
        }
        finally { model.Release(); }
    }
}
