using static TorchSharp.torch;

namespace ShardPipe.Tests.Support;

/// <summary>
/// Equal greedy sequences — or, where they part, a tie in the target's logits there: the verification pass reads
/// k + 1 positions at once and plain decoding one, and the prompt's pass runs on libtorch's threads, whose count the
/// other tests running beside one change; so rounding may decide a dead heat differently. A tie is the top two logits
/// within <c>1e-5</c> in float32, within two bf16 steps of the top logit (2⁻⁷ of it) for a bfloat16 model.
/// </summary>
public static class GreedyTies
{
    public static void AssertSame(ShardPipe.Modeling.Models.CausalLMModel model, long[] plain, long[] speculative)
    {
        Assert.Equal(plain.Length, speculative.Length);
        int at = 0;
        while (at < plain.Length && plain[at] == speculative[at]) at++;
        if (at == plain.Length) return;
        using var logits = model.Forward(tensor(plain[..at]).unsqueeze(0), lastOnly: true);
        using var top = logits[0, -1].topk(2).values;
        double first = top[0].item<float>(), gap = first - top[1].item<float>();
        double tie = model.DType == ScalarType.BFloat16 ? Math.Abs(first) * Math.ScaleB(1, -7) : 1e-5;
        Assert.True(gap <= tie, $"the tokens part at {at} ({plain[at]} plain, {speculative[at]} speculative) where the target's top two logits are {gap:g3} apart: not a tie (≤ {tie:g3})");
    }
}
