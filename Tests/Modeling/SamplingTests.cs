using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

public class SamplingTests
{
    private static readonly long[][] Prompt = { new long[] { 5, 17, 42 }, new long[] { 9, 3, 11 } };

    private static long[][] Sample(long seed, double temperature = 0.9, int topK = 0, double topP = 1.0)
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("qwen2"));
        return TokenGenerator.Greedy(model, Prompt, null, new GenerationOptions
        {
            MaxNewTokens = 12, IgnoreEos = true, DoSample = true, Temperature = temperature, TopK = topK, TopP = topP, Seed = seed,
        }).Sequences;
    }

    [Fact]
    public void Sampling_with_a_seed_is_reproducible_and_seeds_differ()
    {
        Assert.Equal(Sample(7), Sample(7));
        Assert.NotEqual(Sample(7), Sample(8));
    }

    [Fact]
    public void Top_k_of_one_is_greedy()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("qwen2"));
        var greedy = TokenGenerator.Greedy(model, Prompt, null, new GenerationOptions { MaxNewTokens = 12, IgnoreEos = true }).Sequences;
        Assert.Equal(greedy, Sample(3, temperature: 1.3, topK: 1));
    }

    [Fact]
    public void Top_p_keeps_only_the_nucleus()
    {
        using var logits = tensor(new float[] { 10f, 9.5f, 0f, -1f, -2f }).unsqueeze(0);
        using var sampler = new Sampler(greedy: false, temperature: 1.0, topK: 0, topP: 0.9, seed: 1);
        var seen = Enumerable.Range(0, 200).Select(_ => sampler.Next(logits)[0]).ToHashSet();
        Assert.Subset(new HashSet<long> { 0, 1 }, seen); // tokens 2..4 hold < 10% of the mass together
        Assert.Equal(2, seen.Count);
    }

    [Fact]
    public void Repetition_penalty_divides_positive_and_multiplies_negative_scores_of_seen_tokens()
    {
        using var logits = tensor(new float[] { 2f, -2f, 1.5f }).unsqueeze(0);
        using var plain = new Sampler(greedy: true);
        using var penalised = new Sampler(greedy: true, repetitionPenalty: 2.0);
        var seen = new List<IReadOnlyCollection<long>> { new long[] { 0, 1 } };
        Assert.Equal(0, plain.Next(logits, seen)[0]);
        Assert.Equal(2, penalised.Next(logits, seen)[0]); // 2 → 1, -2 → -4, 1.5 unchanged
    }
}
