using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>Speculative decoding's pure rules, and the single-process loop against plain decoding.</summary>
public class SpeculationTests
{
    [Fact]
    public void Ngram_lookup_proposes_the_continuation_of_the_last_ngrams_most_recent_occurrence()
    {
        // "1 2 3" occurred before, followed by 4 5; the longest n (3) wins over shorter matches.
        Assert.Equal(new long[] { 4, 5, 9 }, NgramProposer.Propose(new long[] { 7, 1, 2, 3, 4, 5, 9, 8, 1, 2, 3 }, 3));
        // The most recent occurrence: "2 3" then 6 is later than "2 3" then 4.
        Assert.Equal(new long[] { 6 }, NgramProposer.Propose(new long[] { 2, 3, 4, 0, 2, 3, 6, 2, 3 }, 1));
        // Falls back to n = 1.
        Assert.Equal(new long[] { 8, 9 }, NgramProposer.Propose(new long[] { 5, 8, 9, 1, 5 }, 2));
        // A repetition of period 2 runs on through its own proposals.
        Assert.Equal(new long[] { 1, 2, 1, 2, 1 }, NgramProposer.Propose(new long[] { 1, 2, 1, 2 }, 5));
        Assert.Equal(new long[] { 4, 4, 4, 4 }, NgramProposer.Propose(new long[] { 9, 4, 4 }, 4));
        // Nothing to look up.
        Assert.Empty(NgramProposer.Propose(new long[] { 1, 2, 3, 4 }, 4));
        Assert.Empty(NgramProposer.Propose(new long[] { 1 }, 4));
        Assert.Empty(NgramProposer.Propose(new long[] { 1, 1 }, 0));
    }

    [Fact]
    public void Greedy_acceptance_takes_the_agreeing_prefix_and_the_targets_next_token()
    {
        Assert.Equal(new long[] { 4, 5, 7 }, SpeculativeAcceptance.Greedy(new long[] { 4, 5, 7, 1 }, new long[] { 4, 5, 6 }));
        Assert.Equal(new long[] { 9 }, SpeculativeAcceptance.Greedy(new long[] { 9, 5, 7, 1 }, new long[] { 4, 5, 7 }));
        Assert.Equal(new long[] { 4, 5, 7, 1 }, SpeculativeAcceptance.Greedy(new long[] { 4, 5, 7, 1 }, new long[] { 4, 5, 7 }));
        Assert.Equal(new long[] { 3 }, SpeculativeAcceptance.Greedy(new long[] { 3 }, Array.Empty<long>()));
        Assert.Throws<ArgumentException>(() => SpeculativeAcceptance.Greedy(new long[] { 3 }, new long[] { 3 }));
    }

    [Fact]
    public void Delivery_stops_at_the_budget_and_after_eos_and_the_next_step_rolls_back_to_the_accepted_positions()
    {
        void Delivers(long[] tokens, bool finished, (long[] Tokens, bool Finished) got)
        {
            Assert.Equal(tokens, got.Tokens);
            Assert.Equal(finished, got.Finished);
        }
        Delivers(new long[] { 4, 5 }, false, Speculation.Deliver(new long[] { 4, 5, 6 }, 8, 10, new long[] { 2 }, false));
        Delivers(new long[] { 4, 2 }, true, Speculation.Deliver(new long[] { 4, 2, 6 }, 0, 10, new long[] { 2 }, false));
        Delivers(new long[] { 4, 2, 6 }, false, Speculation.Deliver(new long[] { 4, 2, 6 }, 0, 10, new long[] { 2 }, true));
        Assert.Equal(3, Speculation.DraftBudget(4, 6, 10));
        Assert.Equal(0, Speculation.DraftBudget(4, 9, 10));

        // Mask of 2 padded + 6 real positions, 3 of them drafts; 1 draft accepted plus the target's token (2 delivered).
        var mask = new long[] { 0, 0, 1, 1, 1, 1, 1, 1 };
        var (ids, grown, positions) = Speculation.NextInput(mask, drafted: 3, delivered: 2, last: 77, drafts: new long[] { 5, 6 });
        Assert.Equal(new long[] { 77, 5, 6 }, ids);
        Assert.Equal(new long[] { 0, 0, 1, 1, 1, 1, 1, 1, 1 }, grown); // 6 kept + 3 new
        Assert.Equal(new long[] { 4, 5, 6 }, positions);
        Assert.Equal(6, grown.Length - ids.Length); // the cache length every stage truncates to

        Assert.Throws<InvalidInputException>(() => Speculation.Validate("draft", 4, 1)); // no draft model named
        Assert.Throws<InvalidInputException>(() => Speculation.Validate("eagle", 4, 1));
        Assert.Throws<InvalidInputException>(() => Speculation.Validate("ngram", 0, 1));
        Assert.Throws<InvalidInputException>(() => Speculation.Validate("ngram", 4, 2));
    }

    [Fact]
    public void Kv_cache_truncate_drops_the_rejected_positions_and_the_next_update_overwrites_them()
    {
        using var cache = new KvCache();
        using var k = arange(2 * 5 * 3, dtype: ScalarType.Float32).reshape(1, 2, 5, 3);
        cache.Update(0, k, k);
        cache.Update(1, k, k);
        cache.Truncate(3);
        Assert.Equal(3, cache.SeenTokens(0));
        Assert.Equal(3, cache.SeenTokens(1));
        using var fresh = full(new long[] { 1, 2, 1, 3 }, -1f);
        var (kk, _) = cache.Update(0, fresh, fresh);
        Assert.Equal(4, kk.shape[2]);
        Assert.True(kk.narrow(2, 0, 3).allclose(k.narrow(2, 0, 3), 0, 0));
        Assert.Equal(-1f, kk[0, 1, 3, 2].item<float>());
        cache.Truncate(10); // never grows
        Assert.Equal(4, cache.SeenTokens(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Truncate(-1));
    }

    [Fact]
    public void Rejection_sampling_of_a_point_mass_draft_keeps_the_targets_distribution()
    {
        // A tiny vocabulary: p at the draft's position and at the position after it.
        var p0 = new float[] { 0.1f, 0.5f, 0.3f, 0.1f };
        var p1 = new float[] { 0.25f, 0.05f, 0.6f, 0.1f };
        var probs = new ReadOnlyMemory<float>[] { p0, p1 };
        const int n = 40_000;
        var first = new int[4];
        var second = new int[4];
        int accepted = 0;
        for (int seed = 0; seed < n; seed++)
        {
            var tokens = SpeculativeAcceptance.Sample(probs, new long[] { 2 }, seed, firstIndex: 3);
            first[tokens[0]]++;
            if (tokens.Length == 2)
            {
                Assert.Equal(2, tokens[0]); // only an accepted draft is followed by a second token
                accepted++;
                second[tokens[1]]++;
            }
        }
        // Each frequency within 4.5 standard errors of the target's probability (a wrong rule is off by far more).
        for (int v = 0; v < 4; v++)
        {
            double sd = Math.Sqrt(p0[v] * (1 - p0[v]) / n);
            Assert.True(Math.Abs(first[v] / (double)n - p0[v]) < 4.5 * sd, $"token {v}: {first[v] / (double)n:0.0000} drawn, p = {p0[v]}");
            double sd1 = Math.Sqrt(p1[v] * (1 - p1[v]) / accepted);
            Assert.True(Math.Abs(second[v] / (double)accepted - p1[v]) < 4.5 * sd1, $"bonus token {v}: {second[v] / (double)accepted:0.0000} drawn, p = {p1[v]}");
        }
        // Reproducible: the same seed and token index give the same tokens; another index other draws.
        Assert.Equal(SpeculativeAcceptance.Sample(probs, new long[] { 2 }, 99, 3), SpeculativeAcceptance.Sample(probs, new long[] { 2 }, 99, 3));
        var differ = Enumerable.Range(0, 50).Count(s => !SpeculativeAcceptance.Sample(probs, new long[] { 2 }, s, 3).SequenceEqual(SpeculativeAcceptance.Sample(probs, new long[] { 2 }, s, 4)));
        Assert.True(differ > 10, $"the token index changes the draws ({differ} of 50 differ)");
    }

    /// <summary>
    /// A verification pass's logits are those of its positions decoded one at a time, bit for bit, for the float32
    /// reference models and families: every kernel of the pass computes a position's row as it computes that row alone. The Qwen2
    /// reference (intermediate 176, not a whole number of libtorch's 32-element SiLU passes) differed by up to 3.6e-7
    /// while its SiLU ran on libtorch, whose scalar tail fell on different elements for 1 row and for 5 (session 24).
    /// </summary>
    [Theory]
    [InlineData("llama_untied")]
    [InlineData("llama_tied")]
    [InlineData("mistral")]
    [InlineData("qwen2")]
    [InlineData("families/mixtral_sliding")] // experts; SiLU rows of 80, a scalar tail
    [InlineData("families/gemma")]
    [InlineData("families/phi")]
    public void A_verification_pass_gives_the_logits_of_one_position_at_a_time_bit_for_bit(string name)
    {
        var model = PreTrainedModel.FromPretrained(name.StartsWith("families/", StringComparison.Ordinal)
            ? Path.Combine(TestPaths.Families, name["families/".Length..]) : TestPaths.Model(name));
        using var noGrad = no_grad();
        using var cache = new KvCache();
        const int past = 40;
        var prompt = Enumerable.Range(0, past).Select(i => (long)(i * 7 % 150 + 1)).ToArray();
        using (model.Forward(tensor(prompt).unsqueeze(0), cache: cache)) { }
        var next = new long[] { 5, 18, 31, 44, 57 };
        var oneByOne = new List<float[]>();
        foreach (var id in next)
        {
            using var logits = model.Forward(tensor(new[] { id }).unsqueeze(0), cache: cache);
            oneByOne.Add(logits.reshape(-1).data<float>().ToArray());
        }
        cache.Truncate(past);
        using var pass = model.Forward(tensor(next).unsqueeze(0), cache: cache);
        using var rows = pass.reshape(next.Length, -1);
        for (int i = 0; i < next.Length; i++)
        {
            var got = rows[i].data<float>().ToArray();
            int differ = got.Zip(oneByOne[i]).Count(p => BitConverter.SingleToInt32Bits(p.First) != BitConverter.SingleToInt32Bits(p.Second));
            Assert.True(differ == 0, $"{name}, position {i} of the pass: {differ} of {got.Length} logits differ from decoding it alone");
        }
    }

    [Theory]
    [InlineData("llama_untied", 1.0)]
    [InlineData("qwen2", 1.0)]
    [InlineData("llama_tied", 1.3)]
    public void Greedy_tokens_with_ngram_speculation_equal_plain_decoding_in_one_process(string name, double penalty)
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model(name));
        // A repetitive prompt, so that prompt lookup proposes (and some proposals are right, some wrong).
        var prompt = new long[] { 5, 17, 42, 9, 3, 5, 17, 42, 9, 3, 5, 17 };
        var options = new GenerationOptions { MaxNewTokens = 40, IgnoreEos = true, RepetitionPenalty = penalty };
        var plain = TokenGenerator.Greedy(model, new[] { prompt }, null, options);
        foreach (int k in new[] { 1, 4, 7 })
        {
            var (spec, counts) = SpeculativeGenerator.Generate(model, prompt, null, options, k);
            Assert.Equal(plain.Sequences[0], spec.Sequences[0]);
            Assert.Equal(40, spec.NewTokens);
            Assert.True(counts.Proposed > 0, $"k={k}: prompt lookup proposed nothing");
            Assert.True(counts.Steps < 40 || counts.Accepted == 0, $"k={k}: {counts.Steps} steps for 40 tokens with {counts.Accepted} accepted");
            Assert.Equal(40, counts.Steps + counts.Accepted);
        }
    }

    /// <summary>
    /// A quantized model (int4 and int8 on load, shapes that take the AVX-512 kernels) in float32 and bfloat16, and the
    /// bfloat16 model unquantized: the verification pass's products of k + 1 rows are the one-row kernels' bit for bit
    /// (QuantDecodeRowsTests), and the prompt runs alone on the first step (<see cref="Speculation.DraftBudget"/>), so
    /// ngram speculation gives the plain greedy tokens — up to a dead heat (<see cref="GreedyTies"/>: the prompt's pass runs
    /// on libtorch's threads, whose count tests running beside this one change). In bfloat16 this model's tokens parted
    /// after 26 while the first step carried drafts (the prompt's pass attended through libtorch's SDPA); that rule itself
    /// is asserted on <see cref="Speculation.DraftBudget"/> and on the draft stage.
    /// </summary>
    [Theory]
    [InlineData("int4", "float32")]
    [InlineData("int8", "float32")]
    [InlineData("int4", "bfloat16")]
    [InlineData("int8", "bfloat16")]
    [InlineData(null, "bfloat16")]
    public void Greedy_tokens_with_ngram_speculation_equal_plain_decoding_for_a_quantized_model(string? scheme, string dtype)
    {
        using var dir = new TempDir();
        ShardPipe.Checkpoints.Synthetic.SyntheticLlama.Write(dir.Path, new ShardPipe.Checkpoints.Synthetic.SyntheticLlamaSpec
            { HiddenSize = 256, IntermediateSize = 512, NumLayers = 2, NumHeads = 4, NumKeyValueHeads = 2, VocabSize = 512, MaxPositions = 256, Seed = 11 });
        var model = PreTrainedModel.FromPretrained(dir.Path, new FromPretrainedOptions { DType = dtype, Quantize = scheme, QuantizeGroupSize = 64, QuantizeHead = scheme is not null });
        try
        {
            var prompt = new long[] { 5, 17, 42, 9, 3, 5, 17, 42, 9, 3, 5, 17 };
            var options = new GenerationOptions { MaxNewTokens = 48, IgnoreEos = true };
            var plain = TokenGenerator.Greedy(model, new[] { prompt }, null, options);
            foreach (int k in new[] { 2, 4, 6 })
            {
                var (spec, counts) = SpeculativeGenerator.Generate(model, prompt, null, options, k);
                GreedyTies.AssertSame(model, plain.Sequences[0], spec.Sequences[0]);
                Assert.True(counts.Accepted > 0, $"{scheme}/{dtype} k={k}: no draft accepted, the passes of several rows went untested");
            }
        }
        finally { model.Release(); }
    }

    [Fact]
    public void A_sampled_request_with_speculation_reproduces_with_its_seed()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"));
        var prompt = new long[] { 5, 17, 42, 9, 3, 5, 17, 42, 9, 3, 5, 17 };
        GenerationOptions Options(long seed) => new() { MaxNewTokens = 30, IgnoreEos = true, DoSample = true, Temperature = 0.7, TopK = 20, Seed = seed };
        var a = SpeculativeGenerator.Generate(model, prompt, null, Options(11), 4).Result.Sequences[0];
        var b = SpeculativeGenerator.Generate(model, prompt, null, Options(11), 4).Result.Sequences[0];
        var c = SpeculativeGenerator.Generate(model, prompt, null, Options(12), 4).Result.Sequences[0];
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        Assert.All(a.Skip(prompt.Length), t => Assert.InRange(t, 0, model.Config.GetLongOrNull("vocab_size")!.Value - 1));
    }
}
