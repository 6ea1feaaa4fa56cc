using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Actors.Workers;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Actors.Workers;

/// <summary>
/// Prefix caching through stage runners without a cluster: requests sharing a prefix, one after another and merged, give
/// the tokens (and the head's fp32 logits within 1e-4) they give without the cache while prefilling only their suffix;
/// a stage that lost blocks sends the first step back and the request replans with fewer; a tiny budget keeps outputs right.
/// </summary>
public class PrefixStageTests
{
    private const int Block = 4;
    private static readonly SamplingSettings Greedy = new(true, 0, 0, 1, 0);

    private sealed record Request(string Id, long[][] Ids, int MaxNew, int Chunk = 0, long[][]? Mask = null);

    /// <summary>A pipeline of runners by path: "one" (a single stage), or "a" (embed, layer 0) → "b" (the other layers, norm) → "c" (head).</summary>
    private sealed class Pipeline : IDisposable
    {
        public readonly Dictionary<string, StageRunner> Runners = new();
        public readonly Dictionary<string, List<long[]>> Tokens = new();
        public readonly Dictionary<string, Tensor> Logits = new(); // the head's first logits per request
        private readonly CausalLMModel _model;

        public Pipeline(CausalLMModel model, bool threeStages, PrefixCacheSettings? cache)
        {
            _model = model;
            int n = model.NumLayers;
            var route = threeStages
                ? new[] { new PipelineHop("a", true, 0, 1, false, false), new PipelineHop("b", false, 1, n - 1, true, false), new PipelineHop("c", false, 0, 0, false, true) }
                : new[] { new PipelineHop("one", true, 0, n, true, true) };
            foreach (var path in route.Select(h => h.WorkerPath))
                Runners[path] = new StageRunner(model, route, 0, cache is null ? null : PrefixStage.For(cache, 0));
        }

        public PrefixStage Prefix(string path) => Runners[path].Prefix!;

        /// <summary>Runs the requests to the end, all waiting steps of a stage and hop merged.</summary>
        public void Run(params Request[] requests)
        {
            var waiting = new List<(string Path, StageInput Step)>();
            foreach (var r in requests)
            {
                Tokens[r.Id] = new List<long[]>();
                var mask = r.Mask ?? DecodeRule.FullMask(r.Ids);
                var chunk = ChunkedPrefill.First(r.Ids, mask, DecodeRule.PositionsFromMask(mask), r.Chunk);
                var state = new GenerationState(r.MaxNew, true, Array.Empty<long>(), 0, new bool[r.Ids.Length], Greedy, null, PromptRestWire.ToWire(chunk.Rest));
                waiting.Add((Runners.Keys.First(), new StageInput(r.Id, 0, 0, null, chunk.Ids, chunk.Mask, chunk.Positions, "caller", state, 0, null)));
            }
            var done = new HashSet<string>();
            for (int tick = 0; done.Count < requests.Length; tick++)
            {
                Assert.True(tick < 2000, "the requests did not finish");
                var (path, first) = waiting[0];
                var now = waiting.Where(w => w.Path == path && w.Step.Hop == first.Hop).ToList();
                waiting.RemoveAll(now.Contains);
                foreach (var o in Runners[path].Run(now.Select(w => w.Step).ToList()))
                    switch (o.Message)
                    {
                        case StageInput next:
                            if (o.Path == "c" && next.Step == 0 && next.Generation!.Prefill is null && !Logits.ContainsKey(next.RequestId))
                                using (no_grad())
                                    Logits[next.RequestId] = _model.Project(TensorWire.ToTensor(next.Hidden!)).to(ScalarType.Float32).clone().DetachFromDisposeScope();
                            waiting.Add((o.Path, next));
                            break;
                        case TokensGenerated t: Tokens[t.RequestId].Add(t.Tokens); break;
                        case GenerationDone d when o.Path == "caller": done.Add(d.RequestId); break;
                        case ReleaseRequest rel: Runners[o.Path].Release(rel.RequestId); break;
                    }
            }
        }

        public string TokensOf(string id) => string.Join(" | ", Tokens[id].Select(t => string.Join(",", t)));

        public void Dispose()
        {
            foreach (var r in Runners.Values) r.Dispose();
            foreach (var l in Logits.Values) l.Dispose();
        }
    }

    private static long[] Prompt(long vocab, int length, int seed) => Enumerable.Range(0, length).Select(i => (long)((i * 37 + seed * 11 + 3) % vocab)).ToArray();

    private static readonly PrefixCacheSettings On = new(true, Block, 1L << 30);

    /// <summary>Requests sharing a 22-token prefix (5 blocks) with distinct suffixes; one prefilled in chunks.</summary>
    private static Request[] Sharing(long vocab, int count, int prefix = 22)
    {
        var shared = Prompt(vocab, prefix, 1);
        return Enumerable.Range(0, count).Select(i => new Request($"r{i}", new[] { shared.Concat(Prompt(vocab, 3 + i, 10 + i)).ToArray() }, 6, Chunk: i == 2 ? 5 : 0)).ToArray();
    }

    [Theory]
    [InlineData("llama_untied", false)]
    [InlineData("llama_untied", true)]
    [InlineData("gpt2", true)]
    [InlineData("qwen2", false)]
    public void Requests_sharing_a_prefix_one_after_another_give_the_tokens_and_logits_they_give_without_the_cache(string name, bool threeStages)
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model(name));
        try
        {
            var requests = Sharing(model.VocabSize, 4);
            using var plain = new Pipeline(model, threeStages, null);
            using var cached = new Pipeline(model, threeStages, On);
            foreach (var r in requests)
            {
                plain.Run(r);
                cached.Run(r);
                Assert.Equal(plain.TokensOf(r.Id), cached.TokensOf(r.Id));
                if (threeStages)
                {
                    float diff = (plain.Logits[r.Id] - cached.Logits[r.Id]).abs().max().item<float>();
                    Assert.True(diff <= 1e-4f, $"{r.Id}: logits differ by {diff}");
                }
            }
            var first = cached.Prefix(threeStages ? "a" : "one");
            // The first request found nothing; each later one reused the prefix's 5 full blocks (20 tokens) at least.
            Assert.True(first.ReusedTokens >= 3 * 20, $"reused {first.ReusedTokens} of {first.PromptTokens} prompt tokens");
            Assert.Equal(requests.Sum(r => (long)r.Ids[0].Length), first.PromptTokens);
            Assert.All(cached.Runners.Values, r => Assert.Equal(0, r.Prefix!.Restarts));
            if (threeStages) Assert.True(cached.Prefix("b").Cache.Blocks >= 5);
            if (threeStages) Assert.Equal(0, cached.Prefix("c").Cache.Blocks); // the head holds no layers, so no blocks
        }
        finally { model.Release(); }
    }

    [Fact]
    public void Requests_sharing_a_prefix_merged_into_the_same_steps_give_their_tokens_without_the_cache()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_tied"));
        try
        {
            var requests = Sharing(model.VocabSize, 5).ToList();
            // A two-row left-padded request merged with them takes no part in the cache.
            requests.Add(new Request("padded", new[] { Prompt(model.VocabSize, 9, 3), new long[] { 0, 0 }.Concat(Prompt(model.VocabSize, 7, 4)).ToArray() }, 5,
                Mask: new[] { Enumerable.Repeat(1L, 9).ToArray(), new long[] { 0, 0, 1, 1, 1, 1, 1, 1, 1 } }));
            using var plain = new Pipeline(model, true, null);
            using var cached = new Pipeline(model, true, On);
            foreach (var r in requests) plain.Run(r);
            cached.Run(requests[0]); // the prefix seen once
            cached.Run(requests.Skip(1).ToArray()); // the others at once, merged
            foreach (var r in requests) Assert.Equal(plain.TokensOf(r.Id), cached.TokensOf(r.Id));
            foreach (var r in requests.Skip(1).Where(r => r.Mask is null))
                Assert.True((plain.Logits[r.Id] - cached.Logits[r.Id]).abs().max().item<float>() <= 1e-4f, r.Id);
            Assert.True(cached.Prefix("a").ReusedTokens >= 4 * 20);
        }
        finally { model.Release(); }
    }

    [Theory]
    [InlineData(0)] // every block lost at the middle stage: the request prefills all of it again
    [InlineData(2)] // the middle stage kept the first 2 blocks: the first stage replans with 2
    public void A_stage_that_lost_blocks_sends_the_first_step_back_and_the_request_gives_the_same_tokens(int kept)
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"));
        try
        {
            var requests = Sharing(model.VocabSize, 2);
            using var plain = new Pipeline(model, true, null);
            using var cached = new Pipeline(model, true, On);
            foreach (var r in requests) plain.Run(r);
            cached.Run(requests[0]);
            // Evict the prefix's blocks at the middle stage only (from the kept-th on); the first stage still has them all.
            var hashes = PrefixCache.ChainHashes(requests[0].Ids[0], Block, PrefixCache.Identity(0, Block));
            foreach (var h in hashes.Skip(kept)) Assert.True(cached.Prefix("b").Cache.Evict(h));
            long reusedBefore = cached.Prefix("a").ReusedTokens;
            cached.Run(requests[1]);
            Assert.Equal(plain.TokensOf("r1"), cached.TokensOf("r1"));
            Assert.True((plain.Logits["r1"] - cached.Logits["r1"]).abs().max().item<float>() <= 1e-4f);
            Assert.Equal(1, cached.Prefix("b").Restarts);
            Assert.Equal(kept * Block, cached.Prefix("a").ReusedTokens - reusedBefore); // the replanned reuse, counted once
            Assert.True(cached.Prefix("b").Cache.Blocks >= 5); // what it lost is kept again
            // Nothing stays pinned once the requests ended.
            Assert.All(hashes, h => Assert.Equal(0, cached.Prefix("a").Cache.RefCount(h) + cached.Prefix("b").Cache.RefCount(h)));
        }
        finally { model.Release(); }
    }

    [Fact]
    public void A_budget_smaller_than_the_requests_keeps_their_outputs_right()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"));
        try
        {
            var requests = Sharing(model.VocabSize, 4);
            using var plain = new Pipeline(model, true, null);
            foreach (var r in requests) plain.Run(r);
            foreach (long budget in new long[] { 1, 3_000, 20_000 })
            {
                using var cached = new Pipeline(model, true, On with { MaxBytes = budget });
                foreach (var r in requests) cached.Run(r);
                cached.Run(requests.Select(r => r with { Id = r.Id + "-again" }).ToArray());
                foreach (var r in requests)
                {
                    Assert.Equal(plain.TokensOf(r.Id), cached.TokensOf(r.Id));
                    Assert.Equal(plain.TokensOf(r.Id), cached.TokensOf(r.Id + "-again"));
                }
                Assert.All(cached.Runners.Values, s => Assert.True(s.Prefix!.Cache.Bytes <= budget, $"{s.Prefix!.Cache.Bytes} bytes cached over a budget of {budget}"));
            }
        }
        finally { model.Release(); }
    }
}
