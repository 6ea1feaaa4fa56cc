using System.Text.Json.Nodes;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// Speculative decoding with a draft model in one process: the draft's greedy proposals, its KV cache kept in step
/// with the accepted context, plain greedy tokens (acceptance 1.0 with the target as its own draft), sampled
/// tokens (sampled drafts, <see cref="SampledDraftTests"/>) reproducible and distributed as the target's, and the
/// vocabulary/tokenizer check.
/// </summary>
public class DraftSpeculationTests
{
    private static readonly long[] Prompt = { 5, 17, 42, 9, 3, 5, 17, 42, 9, 3, 5, 17 };

    [Fact]
    public void The_draft_proposes_its_greedy_tokens_and_keeps_its_cache_at_the_accepted_context()
    {
        using var tmp = new TempDir();
        var draft = PreTrainedModel.FromPretrained(DraftFolders.Small(tmp));
        // What the draft would generate greedily on its own.
        var greedy = TokenGenerator.Greedy(draft, new[] { Prompt }, null, new GenerationOptions { MaxNewTokens = 8, IgnoreEos = true }).Sequences[0][Prompt.Length..];
        using var proposer = new DraftProposer(draft);
        Assert.Equal(greedy[..4], proposer.Propose(Prompt, 4));
        Assert.Equal(Prompt.Length + 3, proposer.CachedTokens); // the last draft is never fed

        // Two drafts accepted, then the target's own token (not the draft's third): the cache rolls back to the
        // accepted context and the proposals are the draft's greedy continuation of it, as from a fresh cache.
        long other = (greedy[2] + 1) % 256;
        var context = Prompt.Concat(greedy[..2]).Append(other).ToArray();
        var next = proposer.Propose(context, 3);
        using (var fresh = new DraftProposer(draft)) Assert.Equal(fresh.Propose(context, 3), next);
        Assert.Equal(context.Length + 2, proposer.CachedTokens);
        // Every draft accepted plus a bonus token: nothing to roll back, the cache only grows.
        var all = context.Concat(next).Append(7L).ToArray();
        var after = proposer.Propose(all, 2);
        using (var fresh = new DraftProposer(draft)) Assert.Equal(fresh.Propose(all, 2), after);
        Assert.Empty(proposer.Propose(all, 0));
    }

    [Theory]
    [InlineData("llama_untied")]
    [InlineData("qwen2")]
    public void Greedy_tokens_with_a_draft_model_equal_plain_decoding_and_the_target_as_its_own_draft_is_always_accepted(string name)
    {
        using var tmp = new TempDir();
        var model = PreTrainedModel.FromPretrained(TestPaths.Model(name));
        int vocab = (int)model.VocabSize;
        var small = PreTrainedModel.FromPretrained(DraftFolders.Small(tmp, vocab));
        var options = new GenerationOptions { MaxNewTokens = 40, IgnoreEos = true };
        var plain = TokenGenerator.Greedy(model, new[] { Prompt }, null, options);
        foreach (int k in new[] { 1, 4 })
        {
            var (spec, counts) = SpeculativeGenerator.Generate(model, Prompt, null, options, k, small);
            GreedyTies.AssertSame(model, plain.Sequences[0], spec.Sequences[0]);
            Assert.True(counts.Proposed > 0);
            Assert.Equal(40, counts.Steps + counts.Accepted);
        }
        var self = PreTrainedModel.FromPretrained(TestPaths.Model(name));
        var (same, selfCounts) = SpeculativeGenerator.Generate(model, Prompt, null, options, 4, self);
        GreedyTies.AssertSame(model, plain.Sequences[0], same.Sequences[0]);
        Assert.Equal(selfCounts.Proposed, selfCounts.Accepted); // acceptance 1.0
        Assert.Equal(1.0, selfCounts.AcceptanceRate);
        Assert.Equal(9, selfCounts.Steps); // 40 tokens: the prompt's step gives one, then 5 a step
    }

    [Fact]
    public void A_sampled_request_with_a_draft_model_reproduces_with_its_seed()
    {
        using var tmp = new TempDir();
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"));
        var small = PreTrainedModel.FromPretrained(DraftFolders.Small(tmp));
        GenerationOptions Options(long seed) => new() { MaxNewTokens = 30, IgnoreEos = true, DoSample = true, Temperature = 0.7, TopK = 20, Seed = seed };
        var a = SpeculativeGenerator.Generate(model, Prompt, null, Options(11), 4, small).Result.Sequences[0];
        var b = SpeculativeGenerator.Generate(model, Prompt, null, Options(11), 4, small).Result.Sequences[0];
        var c = SpeculativeGenerator.Generate(model, Prompt, null, Options(12), 4, small).Result.Sequences[0];
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
    }

    [Fact]
    public void Sampled_tokens_with_a_draft_model_are_distributed_as_the_targets_on_a_tiny_vocabulary()
    {
        // A target and a different draft over 5 ids: the draft's sampled proposals are often rejected, so both branches
        // of the rule (accept with min(1, p(x)/q(x)); else draw from norm(max(0, p − q))) decide the tokens.
        using var tmp = new TempDir();
        const int vocab = 5;
        string targetFolder = tmp.Sub("target");
        SyntheticLlama.Write(targetFolder, new SyntheticLlamaSpec { HiddenSize = 16, IntermediateSize = 32, NumLayers = 1, NumHeads = 2, NumKeyValueHeads = 1, VocabSize = vocab, MaxPositions = 64, Seed = 5 });
        var target = PreTrainedModel.FromPretrained(targetFolder);
        var draft = PreTrainedModel.FromPretrained(DraftFolders.Small(tmp, vocab, seed: 9, hidden: 16));
        var prompt = new long[] { 1, 3, 0, 2 };
        // The target's distribution of the first token, and of the second after the draft's first guess (two drafts ride
        // on the first step: the second token, after an accepted first draft, is the second draft's verdict).
        using var sampler = new Sampler(false, 1.0, 0, 1.0, 0);
        float[] Dist(long[] ids)
        {
            using var logits = target.Forward(tensor(ids).unsqueeze(0));
            using var p = sampler.Distribution(logits[0, -1].unsqueeze(0));
            return p[0].data<float>().ToArray();
        }
        var p0 = Dist(prompt);
        using var proposer = new DraftProposer(draft);
        long guess = proposer.Propose(prompt, 1)[0];
        var p1 = Dist(prompt.Append(guess).ToArray());

        const int n = 3000;
        var first = new int[vocab];
        var second = new int[vocab];
        int afterGuess = 0, proposed = 0, accepted = 0;
        for (int seed = 0; seed < n; seed++)
        {
            var options = new GenerationOptions { MaxNewTokens = 3, IgnoreEos = true, DoSample = true, Temperature = 1.0, Seed = seed };
            var (result, counts) = SpeculativeGenerator.Generate(target, prompt, null, options, 2, draft);
            var tokens = result.Sequences[0][prompt.Length..];
            first[tokens[0]]++;
            if (tokens[0] == guess)
            {
                afterGuess++;
                second[tokens[1]]++;
            }
            proposed += counts.Proposed;
            accepted += counts.Accepted;
        }
        Assert.InRange(accepted, 1, proposed - 1); // both branches ran
        Assert.True(afterGuess >= 300, $"the draft's first guess {guess} was drawn {afterGuess} times of {n}, too few to test the second token");
        for (int v = 0; v < vocab; v++)
        {
            double sd = Math.Sqrt(p0[v] * (1 - p0[v]) / n) + 1e-9;
            Assert.True(Math.Abs(first[v] / (double)n - p0[v]) < 4.5 * sd, $"first token {v}: {first[v] / (double)n:0.0000} drawn, p = {p0[v]:0.0000}");
            double sd1 = Math.Sqrt(p1[v] * (1 - p1[v]) / afterGuess) + 1e-9;
            Assert.True(Math.Abs(second[v] / (double)afterGuess - p1[v]) < 4.5 * sd1, $"second token {v} after {guess}: {second[v] / (double)afterGuess:0.0000} drawn, p = {p1[v]:0.0000}");
        }
    }

    [Fact]
    public void A_draft_model_with_another_vocabulary_or_tokenizer_is_refused_naming_the_field()
    {
        using var tmp = new TempDir();
        string target = DraftFolders.Small(tmp, 256, "target", seed: 3);
        var vocab = Assert.Throws<InvalidInputException>(() => DraftModelCheck.Validate(target, DraftFolders.Small(tmp, 300, "wide")));
        Assert.Contains("config.json vocab_size 300", vocab.Message);
        Assert.Contains("256", vocab.Message);

        string other = DraftFolders.Small(tmp, 256, "other");
        DraftModelCheck.Validate(target, other); // same vocabulary and tokenizer: accepted
        var tok = JsonNode.Parse(File.ReadAllText(Path.Combine(other, "tokenizer.json")))!;
        var v = tok["model"]!["vocab"]!.AsObject();
        var (a, b) = (v.First().Key, v.Skip(1).First().Key);
        (v[a], v[b]) = (v[b]!.GetValue<int>(), v[a]!.GetValue<int>()); // two ids swapped
        File.WriteAllText(Path.Combine(other, "tokenizer.json"), tok.ToJsonString());
        var swapped = Assert.Throws<InvalidInputException>(() => DraftModelCheck.Validate(target, other));
        Assert.Contains("tokenizer.json \"model\"", swapped.Message);

        // A loaded draft of another vocabulary: refused before it proposes anything.
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"));
        var wide = PreTrainedModel.FromPretrained(Path.Combine(tmp.Path, "wide"));
        Assert.Throws<InvalidInputException>(() => SpeculativeGenerator.Generate(model, Prompt, null, new GenerationOptions { MaxNewTokens = 4 }, 4, wide));
        Assert.Throws<InvalidInputException>(() => Speculation.Validate("draft", 4, 1));
        Assert.Throws<InvalidInputException>(() => Speculation.Validate("draft", 0, 1, "d"));
        Assert.Throws<InvalidInputException>(() => Speculation.Validate("draft", Speculation.MaxTokens + 1, 1, "d"));
        Assert.Throws<InvalidInputException>(() => Speculation.Validate("ngram", 4, 1, "d"));
        Speculation.Validate("draft", 4, 1, "d");
    }
}
