using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// A merged step's inputs prepared once for all its requests (<see cref="MergedStepInputs"/>: one embedding lookup, one
/// rotary call, masks only where a request needs one) against each request prepared alone
/// (<see cref="CausalLMModel.PrepareLayerInputs"/> per request, as merged steps did before): the same logits (1e-4) and
/// tokens step after step — prompts of different lengths, a left-padded request, decode rows before and past a sliding
/// window — for every family.
/// </summary>
public class MergedStepInputsTests
{
    private sealed record Part(long[][] Ids, long[][] Mask, long[][] Positions, KvCache Cache);

    private static CausalLMModel Load(string name) =>
        PreTrainedModel.FromPretrained(Directory.Exists(TestPaths.Model(name)) ? TestPaths.Model(name) : Path.Combine(TestPaths.Families, name));

    /// <summary>Last-position logits of a step, each request prepared alone (its own embedding, tables and mask).</summary>
    private static Tensor PerRequest(CausalLMModel model, IReadOnlyList<Part> parts)
    {
        var hidden = parts.Select(p => model.Embed(IdRows.ToTensor(p.Ids), IdRows.ToTensor(p.Positions))).ToList();
        var inputs = parts.Select((p, i) => model.PrepareLayerInputs(IdRows.ToTensor(p.Positions), IdRows.ToTensor(p.Mask),
            p.Cache.SeenTokens(0), p.Ids[0].Length, hidden[i].dtype, CPU, p.Cache, 0)).ToList();
        var batch = new RaggedBatch(parts.Select((p, i) => ((long)p.Ids.Length, (long)p.Ids[0].Length, inputs[i])));
        var flat = cat(hidden.Select(h => h.reshape(-1, h.shape[2])).ToArray(), 0);
        for (int l = 0; l < model.NumLayers; l++) flat = model.Layer(l, flat, batch);
        var logits = model.Project(model.FinalNorm(flat.index_select(0, tensor(batch.LastPositions())))).to(ScalarType.Float32);
        foreach (var li in inputs) li.Dispose();
        return logits;
    }

    /// <summary>The same step prepared once for all (what a stage runs).</summary>
    private static Tensor Merged(CausalLMModel model, IReadOnlyList<Part> parts)
    {
        var flat = MergedStepInputs.Embed(model, parts.Select((p, i) => ($"r{i}", (long[][]?)p.Ids, p.Positions, p.Mask)).ToList());
        var made = new List<LayerInputs>();
        var batch = MergedStepInputs.Prepare(model, parts.Select(p => new MergedStepInputs.Part(p.Positions, p.Mask, p.Cache.SeenTokens(0), p.Cache)).ToList(), flat.dtype, 0, made);
        for (int l = 0; l < model.NumLayers; l++) flat = model.Layer(l, flat, batch);
        var logits = model.Project(model.FinalNorm(flat.index_select(0, tensor(batch.LastPositions())))).to(ScalarType.Float32);
        foreach (var li in made) li.Dispose();
        return logits;
    }

    [Theory]
    [InlineData("llama_untied")]
    [InlineData("gpt2")]
    [InlineData("mistral_window")]
    [InlineData("qwen2")]
    [InlineData("phi")]
    [InlineData("gemma")]
    [InlineData("mixtral_sliding")]
    public void Prepared_once_for_all_gives_each_request_its_logits_prepared_alone(string name)
    {
        var model = Load(name);
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            long vocab = model.VocabSize;
            long[] Prompt(int length, int seed) => Enumerable.Range(0, length).Select(i => (long)((i * 29 + seed * 7 + 1) % vocab)).ToArray();
            // Three requests: 6 and 13 positions, and two rows of which the second is left-padded (a mask to build at every step).
            var ids = new List<long[][]>
            {
                new[] { Prompt(6, 1) },
                new[] { Prompt(13, 2) },
                new[] { Prompt(4, 3), new long[] { 0, 0 }.Concat(Prompt(2, 4)).ToArray() },
            };
            var masks = new List<long[][]> { DecodeRule.FullMask(ids[0]), DecodeRule.FullMask(ids[1]), new[] { new long[] { 1, 1, 1, 1 }, new long[] { 0, 0, 1, 1 } } };
            var alone = ids.Select(_ => new KvCache()).ToList();
            var together = ids.Select(_ => new KvCache()).ToList();
            // The prompts as one step, then decode steps of all three (the 6-token request passes the window of 8 on the third).
            for (int step = 0; step < 5; step++)
            {
                var positions = masks.Select((m, i) => step == 0 ? DecodeRule.PositionsFromMask(m) : m.Select(r => new[] { r.Sum() - 1 }).ToArray()).ToList();
                var expected = PerRequest(model, ids.Select((x, i) => new Part(x, masks[i], positions[i], alone[i])).ToList());
                var actual = Merged(model, ids.Select((x, i) => new Part(x, masks[i], positions[i], together[i])).ToList());
                Assert.True(expected.allclose(actual, 0, 1e-4), $"{name}, step {step}: logits differ by {(expected - actual).abs().max().item<float>()}");
                var next = expected.argmax(-1).data<long>().ToArray();
                Assert.Equal(next, actual.argmax(-1).data<long>().ToArray());
                // Each row's next token; its mask and cache grow by one.
                int row = 0;
                for (int i = 0; i < ids.Count; i++)
                {
                    ids[i] = ids[i].Select(_ => new[] { next[row++] }).ToArray();
                    masks[i] = masks[i].Select(r => r.Append(1L).ToArray()).ToArray();
                }
            }
            Assert.True(alone[0].SeenTokens(0) > 8 && alone[1].SeenTokens(0) > 8, "the decode steps passed the sliding window's length");
            foreach (var c in alone.Concat(together)) c.Dispose();
        }
        finally { model.Release(); }
    }

    [Theory]
    [InlineData("llama_untied")]
    [InlineData("phi")]
    [InlineData("qwen2")]
    public void One_table_call_equals_every_requests_own_tables(string name)
    {
        var model = Load(name);
        try
        {
            using var scope = NewDisposeScope();
            var parts = new[]
            {
                new MergedStepInputs.Part(new[] { new long[] { 7 } }, new[] { Enumerable.Repeat(1L, 8).ToArray() }, 7, new KvCache()),
                new MergedStepInputs.Part(new[] { new long[] { 0, 1, 2, 3, 4 } }, new[] { Enumerable.Repeat(1L, 5).ToArray() }, 0, new KvCache()),
                new MergedStepInputs.Part(new[] { new long[] { 40 }, new long[] { 38 } }, new[] { Enumerable.Repeat(1L, 41).ToArray(), new long[] { 0, 0 }.Concat(Enumerable.Repeat(1L, 39)).ToArray() }, 40, new KvCache()),
            };
            var made = new List<LayerInputs>();
            var batch = MergedStepInputs.Prepare(model, parts, ScalarType.Float32, 0, made);
            var own = parts.Select(p => model.PrepareLayerInputs(IdRows.ToTensor(p.PositionIds), IdRows.ToTensor(p.AttentionMask), p.PastLength, p.Tokens, ScalarType.Float32, CPU, p.Cache, 0)).ToList();
            var joined = new RaggedBatch(parts.Select((p, i) => (p.Rows, p.Tokens, own[i])));
            Assert.True(batch.FlatCos!.allclose(joined.FlatCos!, 0, 0) && batch.FlatSin!.allclose(joined.FlatSin!, 0, 0), "the tables are those of each position");
            // Masks: none for the plain decode row, the family's own for the prompt (if any) and the padded rows.
            Assert.Null(batch.Segments[0].Inputs.Mask);
            Assert.Equal(own[1].Mask is null, batch.Segments[1].Inputs.Mask is null);
            Assert.Equal(own[1].IsPlainCausal, batch.Segments[1].Inputs.IsPlainCausal);
            Assert.True(own[2].Mask!.allclose(batch.Segments[2].Inputs.Mask!, 0, 0));
            foreach (var li in made.Concat(own)) li.Dispose();
        }
        finally { model.Release(); }
    }

    [Fact]
    public void One_lookup_equals_each_requests_embedding()
    {
        var model = Load("gpt2"); // token and position embeddings both
        try
        {
            using var scope = NewDisposeScope();
            var steps = new (string, long[][]?, long[][], long[][])[]
            {
                ("a", new[] { new long[] { 5 } }, new[] { new long[] { 9 } }, new[] { Enumerable.Repeat(1L, 10).ToArray() }),
                ("b", new[] { new long[] { 1, 2, 3 }, new long[] { 4, 5, 6 } }, new[] { new long[] { 0, 1, 2 }, new long[] { 0, 0, 1 } }, new[] { new long[] { 1, 1, 1 }, new long[] { 0, 1, 1 } }),
            };
            var merged = MergedStepInputs.Embed(model, steps);
            var each = cat(steps.Select(s => model.Embed(IdRows.ToTensor(s.Item2!), IdRows.ToTensor(s.Item3)).reshape(-1, merged.shape[1])).ToArray(), 0);
            Assert.True(merged.allclose(each, 0, 0));
        }
        finally { model.Release(); }
    }

    [Fact]
    public void Ragged_or_mismatched_rows_are_a_protocol_error()
    {
        var model = Load("llama_untied");
        try
        {
            using var scope = NewDisposeScope();
            var one = new[] { Enumerable.Repeat(1L, 4).ToArray() };
            // Ids and positions of different lengths; a second row shorter than the first; ids for fewer rows than the mask.
            Assert.Throws<ProtocolException>(() => MergedStepInputs.Embed(model, new[] { ("x", (long[][]?)new[] { new long[] { 1, 2 } }, new[] { new long[] { 3 } }, one) }));
            Assert.Throws<ProtocolException>(() => MergedStepInputs.Embed(model, new[] { ("x", (long[][]?)new[] { new long[] { 1, 2 }, new long[] { 1 } }, new[] { new long[] { 2, 3 }, new long[] { 2, 3 } }, new[] { one[0], one[0] }) }));
            Assert.Throws<ProtocolException>(() => MergedStepInputs.Embed(model, new[] { ("x", (long[][]?)new[] { new long[] { 1 } }, new[] { new long[] { 3 } }, new[] { one[0], one[0] }) }));
            // A mask shorter than the cache and the new position; rows of positions and mask that disagree.
            var made = new List<LayerInputs>();
            using var cache = new KvCache();
            Assert.Throws<ProtocolException>(() => MergedStepInputs.Prepare(model, new[] { new MergedStepInputs.Part(new[] { new long[] { 6 } }, one, 6, cache) }, ScalarType.Float32, 0, made));
            Assert.Throws<ProtocolException>(() => MergedStepInputs.Prepare(model, new[] { new MergedStepInputs.Part(new[] { new long[] { 3 }, new long[] { 3 } }, one, 3, cache) }, ScalarType.Float32, 0, made));
            Assert.Empty(made);
        }
        finally { model.Release(); }
    }

    [Fact]
    public void One_argmax_for_every_greedy_row_equals_each_samplers_pick()
    {
        using var scope = NewDisposeScope();
        var logits = randn(new long[] { 7, 300 }, generator: new TorchSharp.torch.Generator(5));
        var together = Sampler.ArgmaxRows(logits);
        using var greedy = new Sampler(true);
        for (int r = 0; r < 7; r++) Assert.Equal(greedy.Next(logits.narrow(0, r, 1)), new[] { together[r] });
        // libtorch's rule on awkward rows: ties (the first), a NaN (the first NaN), infinities, -0 beside 0, rows shorter
        // than a vector and of odd lengths.
        float nan = float.NaN, inf = float.PositiveInfinity;
        var awkward = new[]
        {
            new float[] { 1, 3, 3, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1 },
            new float[] { 1, 2, nan, 5, nan, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9 },
            new float[] { -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf },
            new float[] { -0f, 0f, -0f, -1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12, -13, -14, -15, -16 },
            new float[] { -5, -4, -3, -2, -1, -1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12, -13, inf },
        };
        var rows = tensor(awkward.SelectMany(r => r).ToArray(), new long[] { awkward.Length, 19 });
        Assert.Equal(rows.argmax(-1).data<long>().ToArray(), Sampler.ArgmaxRows(rows));
        Assert.Equal(rows.narrow(1, 0, 3).argmax(-1).data<long>().ToArray(), Sampler.ArgmaxRows(rows.narrow(1, 0, 3)));
        Assert.Equal(rows.narrow(0, 2, 3).argmax(-1).data<long>().ToArray(), Sampler.ArgmaxRows(rows.narrow(0, 2, 3))); // a view into the middle
        var wide = randn(new long[] { 3, 1001 }, generator: new TorchSharp.torch.Generator(6));
        wide[1, 700] = wide[1].max() ; // a tie far from the start
        Assert.Equal(wide.argmax(-1).data<long>().ToArray(), Sampler.ArgmaxRows(wide));
        Assert.True(greedy.Argmax);
        Assert.True(Sampler.TakesArgmax(false, 0, 1.0));   // temperature 0 is greedy
        Assert.False(Sampler.TakesArgmax(true, 0, 1.3));   // a repetition penalty changes the scores first
        Assert.False(Sampler.TakesArgmax(false, 0.7, 1.0)); // sampled
    }
}
