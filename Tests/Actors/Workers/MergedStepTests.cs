using ShardPipe.Actors.Workers;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Actors.Workers;

/// <summary>
/// Continuous batching without a cluster: the steps of several requests run as one merged step (one stage, or two
/// hops on it) give each request exactly what it gets run alone — logits within 1e-4, the same tokens — while requests
/// join and leave between steps, prefill in chunks, and differ in rows, lengths and sampling.
/// </summary>
public class MergedStepTests
{
    private sealed record Request(string Id, long[][] Ids, long[][]? Mask, int MaxNew, SamplingSettings Sampling, int Chunk = 0, int JoinAt = 0);

    private static readonly SamplingSettings Greedy = new(true, 0, 0, 1, 0);

    private static PipelineHop[] Route(CausalLMModel model, bool twoHops)
    {
        int n = model.NumLayers;
        if (!twoHops) return new[] { new PipelineHop("self", true, 0, n, true, true) };
        return new[] { new PipelineHop("self", true, 0, 1, false, false), new PipelineHop("self", false, 1, n - 1, true, true) };
    }

    private static StageInput First(Request r)
    {
        var mask = r.Mask ?? DecodeRule.FullMask(r.Ids);
        var chunk = ChunkedPrefill.First(r.Ids, mask, DecodeRule.PositionsFromMask(mask), r.Chunk);
        var state = new GenerationState(r.MaxNew, true, new long[] { 2 }, 0, new bool[r.Ids.Length], r.Sampling, null, ShardPipe.Actors.Transport.PromptRestWire.ToWire(chunk.Rest));
        return new StageInput(r.Id, 0, 0, null, chunk.Ids, chunk.Mask, chunk.Positions, "caller", state, 0, null);
    }

    /// <summary>Runs the requests through one runner, merging every waiting step of a hop; each joins at its tick. Returns each one's tokens per step.</summary>
    private static Dictionary<string, List<long[]>> Run(CausalLMModel model, bool twoHops, IReadOnlyList<Request> requests, List<int>? rowsPerStep = null)
    {
        using var runner = new StageRunner(model, Route(model, twoHops));
        var tokens = requests.ToDictionary(r => r.Id, _ => new List<long[]>());
        var waiting = new List<StageInput>();
        var done = new HashSet<string>();
        for (int tick = 0; done.Count < requests.Count; tick++)
        {
            Assert.True(tick < 500, "the requests did not finish");
            waiting.AddRange(requests.Where(r => r.JoinAt == tick).Select(First));
            if (waiting.Count == 0) continue;
            int hop = waiting.Min(s => s.Hop);
            var now = waiting.Where(s => s.Hop == hop).ToList();
            waiting.RemoveAll(now.Contains);
            rowsPerStep?.Add(now.Sum(s => s.AttentionMask.Length));
            foreach (var o in runner.Run(now))
                switch (o.Message)
                {
                    case StageInput next: waiting.Add(next); break;
                    case TokensGenerated t: tokens[t.RequestId].Add(t.Tokens); break;
                    case GenerationDone d when o.Path == "caller": done.Add(d.RequestId); break;
                    case ReleaseRequest rel: runner.Release(rel.RequestId); break;
                }
        }
        return tokens;
    }

    [Theory]
    [InlineData("llama_untied", false)]
    [InlineData("llama_untied", true)]
    [InlineData("gpt2", true)]
    [InlineData("mistral_window", false)]
    [InlineData("qwen2", true)]
    public void Merged_steps_give_every_request_its_tokens_run_alone(string name, bool twoHops)
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model(name));
        try
        {
            long vocab = model.VocabSize;
            long[] Prompt(int length, int seed) => Enumerable.Range(0, length).Select(i => (long)((i * 37 + seed * 11 + 3) % vocab)).ToArray();
            var requests = new List<Request>
            {
                new("a", new[] { Prompt(5, 1) }, null, 12, Greedy),
                new("b", new[] { Prompt(11, 2) }, null, 6, Greedy, JoinAt: 0),                          // leaves early
                new("c", new[] { Prompt(3, 3) }, null, 9, new SamplingSettings(false, 0.8, 20, 0.9, 1234), JoinAt: 2), // sampled, joins late
                new("d", new[] { Prompt(23, 4) }, null, 7, Greedy, Chunk: 8, JoinAt: 3),               // chunked prefill
                new("e", new[] { Prompt(4, 5), new long[] { 0, 0 }.Concat(Prompt(2, 6)).ToArray() },   // two rows, left-padded
                    new[] { new long[] { 1, 1, 1, 1 }, new long[] { 0, 0, 1, 1 } }, 8, Greedy, JoinAt: 5),
            };
            var alone = requests.ToDictionary(r => r.Id, r => Run(model, twoHops, new[] { r with { JoinAt = 0 } })[r.Id]);
            var rows = new List<int>();
            var merged = Run(model, twoHops, requests, rows);
            foreach (var r in requests)
            {
                Assert.Equal(r.MaxNew, alone[r.Id].Count);
                Assert.Equal(alone[r.Id].Select(t => string.Join(",", t)), merged[r.Id].Select(t => string.Join(",", t)));
            }
            Assert.True(rows.Max() >= 5, $"steps were merged: at most {rows.Max()} rows in a step");
        }
        finally { model.Release(); }
    }

    [Fact]
    public void A_chunked_prefill_equals_the_whole_prompt_at_once()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_tied"));
        try
        {
            var prompt = new[] { Enumerable.Range(0, 40).Select(i => (long)((i * 13 + 7) % model.VocabSize)).ToArray() };
            var whole = Run(model, true, new[] { new Request("w", prompt, null, 10, Greedy) })["w"];
            foreach (int chunk in new[] { 1, 7, 16, 39, 40, 64 })
                Assert.Equal(whole.Select(t => t[0]), Run(model, true, new[] { new Request("c", prompt, null, 10, Greedy, Chunk: chunk) })["c"].Select(t => t[0]));
        }
        finally { model.Release(); }
    }

    /// <summary>Last-position logits of several requests run through the layers as one ragged batch, each with its own cache.</summary>
    private static List<Tensor> RaggedLogits(CausalLMModel model, IReadOnlyList<(long[][] Ids, long[][] Mask, long[][] Positions, KvCache Cache)> parts)
    {
        var hidden = parts.Select(p => model.Embed(IdRows.ToTensor(p.Ids), IdRows.ToTensor(p.Positions))).ToList();
        var inputs = parts.Select((p, i) => model.PrepareLayerInputs(IdRows.ToTensor(p.Positions), IdRows.ToTensor(p.Mask),
            p.Cache.SeenTokens(0), p.Ids[0].Length, hidden[i].dtype, CPU, p.Cache, 0)).ToList();
        var batch = new RaggedBatch(parts.Select((p, i) => ((long)p.Ids.Length, (long)p.Ids[0].Length, inputs[i])));
        var flat = cat(hidden.Select(h => h.reshape(-1, h.shape[2])).ToArray(), 0);
        for (int l = 0; l < model.NumLayers; l++) flat = model.Layer(l, flat, batch);
        var logits = model.Project(model.FinalNorm(flat.index_select(0, tensor(batch.LastPositions())))).to(ScalarType.Float32);
        foreach (var li in inputs) li.Dispose();
        long row = 0;
        return parts.Select(p => { var x = logits.narrow(0, row, p.Ids.Length); row += p.Ids.Length; return x; }).ToList();
    }

    [Theory]
    [InlineData("llama_untied")]
    [InlineData("gpt2")]
    [InlineData("mistral_window")]
    public void Ragged_logits_match_each_request_alone_within_1e_4(string name)
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model(name));
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            long[][] Ids(int length, int seed) => new[] { Enumerable.Range(0, length).Select(i => (long)((i * 29 + seed) % model.VocabSize)).ToArray() };
            var prompts = new[] { Ids(6, 1), Ids(13, 2), Ids(2, 3) };
            var caches = prompts.Select(_ => new KvCache()).ToList();
            // Prefill all three as one batch of different lengths, then one decode step of all three.
            var prefill = RaggedLogits(model, prompts.Select((p, i) => (p, DecodeRule.FullMask(p), DecodeRule.ForwardPositions(p), caches[i])).ToList());
            for (int i = 0; i < prompts.Length; i++)
            {
                var alone = model.Forward(IdRows.ToTensor(prompts[i]), lastOnly: true).select(1, 0);
                Assert.True(alone.allclose(prefill[i], 0, 1e-4), $"{name}: prefill logits of request {i}");
            }
            var next = prompts.Select((p, i) => new[] { new long[] { (i * 5 + 1) % model.VocabSize } }).ToList();
            var decode = RaggedLogits(model, next.Select((n, i) =>
            {
                long past = prompts[i][0].Length;
                return (n, new[] { Enumerable.Repeat(1L, (int)past + 1).ToArray() }, new[] { new[] { past } }, caches[i]);
            }).ToList());
            for (int i = 0; i < prompts.Length; i++)
            {
                var full = new[] { prompts[i][0].Append(next[i][0][0]).ToArray() };
                var alone = model.Forward(IdRows.ToTensor(full), lastOnly: true).select(1, 0);
                Assert.True(alone.allclose(decode[i], 0, 1e-4), $"{name}: decode logits of request {i}");
            }
            foreach (var c in caches) c.Dispose();
        }
        finally { model.Release(); }
    }

    [Fact]
    public void A_merged_step_that_fails_leaves_every_cache_as_it_was()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"));
        try
        {
            var good = new Request("good", new[] { new long[] { 5, 6, 7, 8 } }, null, 4, Greedy);
            var expected = Run(model, false, new[] { good })["good"];
            using var runner = new StageRunner(model, Route(model, false));
            var tokens = new List<long>();
            StageInput step;
            var first = First(good);
            var warm = runner.Run(new[] { first }).Select(o => o.Message).OfType<StageInput>().Single(); // "good" has a cache now
            // A step with a token outside the vocabulary: the merged step fails; "good"'s cache must not have grown.
            var bad = First(good with { Id = "bad", Ids = new[] { new long[] { 5, 6, 7, 99999 } } });
            Assert.ThrowsAny<Exception>(() => runner.Run(new[] { warm, bad }));
            tokens.Add(warm.InputIds![0][0]);
            step = warm;
            // Run alone, the good request is untouched by the failed attempt: the same tokens as ever.
            while (true)
            {
                var output = runner.Run(new[] { step });
                tokens.AddRange(output.Select(o => o.Message).OfType<TokensGenerated>().Select(t => t.Tokens[0]));
                if (output.Select(o => o.Message).OfType<StageInput>().FirstOrDefault() is not { } next) break;
                step = next;
            }
            Assert.Equal(expected.Select(t => t[0]), tokens);
        }
        finally { model.Release(); }
    }

    [Fact]
    public void A_merged_step_that_fails_after_sampling_puts_each_samplers_random_state_back()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"));
        try
        {
            var sampled = new SamplingSettings(false, 1.0, 0, 1.0, 1234);
            var good = new Request("good", new[] { new long[] { 5, 6, 7, 8 } }, null, 8, sampled);
            var expected = Run(model, false, new[] { good })["good"].Select(t => t[0]).ToList();
            using var runner = new StageRunner(model, Route(model, false));
            var tokens = new List<long>();
            var warm = runner.Run(new[] { First(good) });
            tokens.AddRange(warm.Select(o => o.Message).OfType<TokensGenerated>().Select(t => t.Tokens[0]));
            var step = warm.Select(o => o.Message).OfType<StageInput>().Single();
            // Merged after it, a request whose sampler cannot be made (repetition_penalty ≤ 0): the step fails at the
            // head, after "good" has drawn its token. Rerun alone, "good" must draw the same number again.
            Assert.ThrowsAny<Exception>(() => runner.Run(new[] { step, First(good with { Id = "bad", Sampling = sampled with { RepetitionPenalty = -1 } }) }));
            while (true)
            {
                var output = runner.Run(new[] { step });
                tokens.AddRange(output.Select(o => o.Message).OfType<TokensGenerated>().Select(t => t.Tokens[0]));
                if (output.Select(o => o.Message).OfType<StageInput>().FirstOrDefault() is not { } next) break;
                step = next;
            }
            Assert.Equal(expected, tokens);
        }
        finally { model.Release(); }
    }
}
