using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// Sampled drafts (a draft model on a sampled request): the draft samples each proposal from its own distribution q,
/// and the rejection rule — accept x with min(1, p(x)/q(x)), else draw from norm(max(0, p − q)), a bonus from p when
/// every draft is accepted — emits tokens distributed exactly as the target's p, accepting Σ min(p, q) of the drafts
/// (more than the point-mass rule's Σ p·q). Checked on given rows over a tiny vocabulary with fixed seeds (so the test
/// cannot flake) and on generated tiny models; q travels with the step on the wire.
/// </summary>
public class SampledDraftTests
{
    // A target p at three positions and a draft q at the first two, over 6 ids: q puts mass where p has none (id 5)
    // and none where p has some (id 4), so both the acceptance ratio and the residual decide the tokens.
    private static readonly float[] P0 = { 0.05f, 0.40f, 0.20f, 0.15f, 0.20f, 0.00f };
    private static readonly float[] P1 = { 0.30f, 0.10f, 0.10f, 0.25f, 0.05f, 0.20f };
    private static readonly float[] P2 = { 0.10f, 0.10f, 0.50f, 0.10f, 0.10f, 0.10f };
    private static readonly float[] Q0 = { 0.30f, 0.10f, 0.30f, 0.15f, 0.00f, 0.15f };
    private static readonly float[] Q1 = { 0.05f, 0.50f, 0.10f, 0.05f, 0.20f, 0.10f };

    /// <summary>Whether the frequencies of <paramref name="counts"/> (of n draws) match <paramref name="p"/>: every id within 4.5 standard errors, and total variation under 0.015.</summary>
    private static bool Matches(int[] counts, int n, float[] p, out string why)
    {
        double tv = 0;
        why = "";
        for (int v = 0; v < p.Length; v++)
        {
            double f = counts[v] / (double)n;
            tv += Math.Abs(f - p[v]) / 2;
            double sd = Math.Sqrt(p[v] * (1 - p[v]) / n) + 1e-9;
            if (Math.Abs(f - p[v]) >= 4.5 * sd) why += $"id {v}: {f:0.0000} drawn, p = {p[v]:0.0000}; ";
        }
        if (tv >= 0.015) why += $"total variation {tv:0.0000}";
        return why.Length == 0;
    }

    private static double SumMin(float[] p, float[] q) => p.Zip(q, Math.Min).Sum(x => (double)x);

    [Fact]
    public void Rejection_sampling_of_sampled_drafts_emits_the_targets_distribution_and_accepts_the_overlap_of_p_and_q()
    {
        const int n = 60_000;
        const int first = 7; // the step's first token is the request's token number 7
        var probs = new ReadOnlyMemory<float>[] { P0, P1, P2 };
        var q = new ReadOnlyMemory<float>[] { Q0, Q1 };
        var drafted = new int[6];
        var t0 = new int[6];
        var t1 = new int[6];
        var t2 = new int[6];
        int n1 = 0, n2 = 0, accepted0 = 0, acceptedPointMass = 0;
        for (int seed = 0; seed < n; seed++)
        {
            var drafts = new[] { SpeculativeAcceptance.Propose(Q0, seed, first), SpeculativeAcceptance.Propose(Q1, seed, first + 1) };
            drafted[drafts[0]]++;
            var tokens = SpeculativeAcceptance.Sample(probs, drafts, seed, first, q);
            t0[tokens[0]]++;
            if (tokens.Length >= 2)
            {
                Assert.Equal(drafts[0], tokens[0]); // a second token follows only an accepted draft
                accepted0++;
                n1++;
                t1[tokens[1]]++;
            }
            if (tokens.Length == 3)
            {
                Assert.Equal(drafts[1], tokens[1]);
                n2++;
                t2[tokens[2]]++; // the bonus token, from p at the last position
            }
            if (SpeculativeAcceptance.Sample(probs, drafts, seed, first).Length >= 2) acceptedPointMass++;
        }
        // The drafts are drawn from q (the draft stream), the emitted tokens from p at every position.
        Assert.True(Matches(drafted, n, Q0, out var why), "drafts: " + why);
        Assert.True(Matches(t0, n, P0, out why), "first token: " + why);
        Assert.True(Matches(t1, n1, P1, out why), "second token: " + why);
        Assert.True(Matches(t2, n2, P2, out why), "bonus token: " + why);
        // The check has the power to catch a wrong rule: accepting every draft would emit q, which it refuses.
        Assert.False(Matches(drafted, n, P0, out _), "accepting every draft (emitting q) must fail the check");
        // Acceptance is Σ min(p, q) = 1 − TV(p, q) — above the point-mass rule's Σ p·q on the same drafts.
        Assert.InRange(accepted0 / (double)n, SumMin(P0, Q0) - 0.01, SumMin(P0, Q0) + 0.01);
        double pointMass = P0.Zip(Q0, (a, b) => (double)a * b).Sum();
        Assert.InRange(acceptedPointMass / (double)n, pointMass - 0.01, pointMass + 0.01);
        Assert.True(SumMin(P0, Q0) > pointMass + 0.3);

        // Reproducible: the same seed and token numbers give the same drafts and tokens; another token number other draws.
        var again = new[] { SpeculativeAcceptance.Propose(Q0, 99, first), SpeculativeAcceptance.Propose(Q1, 99, first + 1) };
        Assert.Equal(SpeculativeAcceptance.Sample(probs, again, 99, first, q), SpeculativeAcceptance.Sample(probs, again, 99, first, q));
        int differ = Enumerable.Range(0, 60).Count(s => SpeculativeAcceptance.Propose(Q0, s, first) != SpeculativeAcceptance.Propose(Q0, s, first + 1));
        Assert.True(differ > 15, $"the token number changes the draft's draws ({differ} of 60 differ)");
        // The draft's stream is not the verdict's: the draft's draw and the acceptance's are independent numbers.
        Assert.NotEqual(new TokenRandom(5, first, SpeculativeAcceptance.DraftStream).NextDouble(), new TokenRandom(5, first).NextDouble());
    }

    [Fact]
    public void A_draft_equal_to_the_target_is_always_accepted_and_malformed_draft_distributions_are_refused()
    {
        var probs = new ReadOnlyMemory<float>[] { P0, P1 };
        for (int seed = 0; seed < 2000; seed++)
        {
            long x = SpeculativeAcceptance.Propose(P0, seed, 0);
            Assert.NotEqual(5, x); // p has no mass at 5: never proposed
            Assert.Equal(2, SpeculativeAcceptance.Sample(probs, new[] { x }, seed, 0, new ReadOnlyMemory<float>[] { P0 }).Length);
        }
        // A draft q gave no mass to is rejected (a malformed proposal), and the residual is drawn instead.
        var rejected = SpeculativeAcceptance.Sample(probs, new long[] { 4 }, 3, 0, new ReadOnlyMemory<float>[] { Q0 });
        Assert.Single(rejected);
        Assert.True(P0[rejected[0]] > Q0[rejected[0]], "the residual max(0, p − q) draws only where p exceeds q");

        // Through Speculation.Verify: q of the wrong size (from a peer) is a typed error naming the sizes.
        using var sampler = new Sampler(false, 1.0, 0, 1.0, 1);
        using var logits = tensor(new float[] { 0, 1, 2, 0, 1, 2, 1, 0, 3, 0, 1, 2 }).reshape(2, 6);
        var bad = Assert.Throws<InvalidInputException>(() => Speculation.Verify(sampler, logits, new long[] { 1 }, new long[] { 0 }, 0, new float[5]));
        Assert.Contains("1 drafts over a vocabulary of 6 need 6", bad.Message);
        var negative = Assert.Throws<InvalidInputException>(() => Speculation.Verify(sampler, logits, new long[] { 1 }, new long[] { 0 }, 0, new[] { 0.5f, 0.7f, -0.2f, 0, 0, 0 }));
        Assert.Contains("non-negative", negative.Message);
        var nan = Assert.Throws<InvalidInputException>(() => Speculation.Verify(sampler, logits, new long[] { 1 }, new long[] { 0 }, 0, new[] { 0.5f, float.NaN, 0.5f, 0, 0, 0 }));
        Assert.Contains("finite", nan.Message);
        var sum = Assert.Throws<InvalidInputException>(() => Speculation.Verify(sampler, logits, new long[] { 1 }, new long[] { 0 }, 0, new[] { 0.5f, 0.1f, 0, 0, 0, 0 }));
        Assert.Contains("sums to 0.6", sum.Message);
        var (tokens, _) = Speculation.Verify(sampler, logits, new long[] { 1 }, new long[] { 0 }, 0, new[] { 0.5f, 0.5f, 0, 0, 0, 0 }); // a well-formed q
        Assert.InRange(tokens.Length, 1, 2);
    }

    [Fact]
    public void The_draft_model_samples_from_its_processed_distribution_keeps_q_and_a_greedy_request_keeps_greedy_drafts()
    {
        using var tmp = new TempDir();
        var draft = PreTrainedModel.FromPretrained(DraftFolders.Small(tmp, 16, seed: 21, hidden: 16));
        var context = new long[] { 1, 4, 9, 3, 7 };
        using var sampler = new Sampler(false, 0.8, 6, 0.95, 42, 1.3);
        using var proposer = new DraftProposer(draft);
        var proposal = proposer.Propose(context, 3, sampler, 10);
        Assert.Equal(3, proposal.Tokens.Length);
        Assert.NotNull(proposal.Probs);
        Assert.Equal(3 * 16, proposal.Probs!.Length);
        // Each row is the draft's distribution after the request's penalty and warpers, over the context and the drafts before it,
        // and each draft is the draft stream's draw from it.
        for (int j = 0; j < 3; j++)
        {
            var seen = context.Concat(proposal.Tokens.Take(j)).ToArray();
            using var logits = draft.Forward(tensor(seen).unsqueeze(0));
            using var q = sampler.Distribution(logits[0, -1].unsqueeze(0), new[] { (IReadOnlyCollection<long>)seen });
            var row = proposal.Probs.AsSpan(j * 16, 16).ToArray();
            var expected = q[0].data<float>().ToArray();
            for (int v = 0; v < 16; v++) Assert.True(Math.Abs(row[v] - expected[v]) < 1e-5, $"draft {j}, id {v}: q {row[v]} vs {expected[v]}");
            Assert.True(row.Count(x => x > 0) <= 6, "top-k 6 leaves at most 6 ids");
            Assert.Equal(SpeculativeAcceptance.Propose(row, 42, 10 + j), proposal.Tokens[j]);
        }
        // A fresh proposer on the same context proposes the same (seeded); a greedy request gets the greedy drafts and no q.
        using (var fresh = new DraftProposer(draft)) Assert.Equal(proposal.Tokens, fresh.Propose(context, 3, sampler, 10).Tokens);
        using var greedy = new Sampler(true);
        using (var fresh = new DraftProposer(draft))
        {
            var g = fresh.Propose(context, 3, greedy, 10);
            Assert.Null(g.Probs);
            using var plain = new DraftProposer(draft);
            Assert.Equal(plain.Propose(context, 3), g.Tokens);
        }
    }

    [Fact]
    public void Sampled_speculation_with_the_target_as_its_own_draft_accepts_every_draft_and_a_different_draft_keeps_the_targets_distribution()
    {
        using var tmp = new TempDir();
        const int vocab = 6;
        string targetFolder = tmp.Sub("target");
        SyntheticLlama.Write(targetFolder, new SyntheticLlamaSpec { HiddenSize = 16, IntermediateSize = 32, NumLayers = 1, NumHeads = 2, NumKeyValueHeads = 1, VocabSize = vocab, MaxPositions = 64, Seed = 5 });
        var target = PreTrainedModel.FromPretrained(targetFolder);
        var self = PreTrainedModel.FromPretrained(targetFolder);
        var draft = PreTrainedModel.FromPretrained(DraftFolders.Small(tmp, vocab, seed: 9, hidden: 16));
        var prompt = new long[] { 1, 3, 0, 2 };

        // The target as its own draft: q = p, so min(1, p/q) = 1 and every draft is accepted (the point-mass rule would accept Σ p²).
        var options = new GenerationOptions { MaxNewTokens = 20, IgnoreEos = true, DoSample = true, Temperature = 1.0, Seed = 3 };
        var (_, selfCounts) = SpeculativeGenerator.Generate(target, prompt, null, options, 4, self);
        Assert.Equal(selfCounts.Proposed, selfCounts.Accepted);
        Assert.Equal(5, selfCounts.Steps); // 20 tokens: the prompt's step gives one, then 5 a step

        // A different draft: the first speculated token — the second of the request, the first step running the prompt
        // alone — is distributed as the target's p given the first token, over fixed seeds.
        using var sampler = new Sampler(false, 1.0, 0, 1.0, 0);
        var p = new float[vocab][];
        for (int first = 0; first < vocab; first++)
        {
            using var logits = target.Forward(tensor(prompt.Append(first).ToArray()).unsqueeze(0));
            using var pt = sampler.Distribution(logits[0, -1].unsqueeze(0));
            p[first] = pt[0].data<float>().ToArray();
        }
        const int n = 6000;
        var counts = new int[vocab, vocab];
        var firsts = new int[vocab];
        int proposed = 0, accepted = 0;
        for (int seed = 0; seed < n; seed++)
        {
            var (result, c) = SpeculativeGenerator.Generate(target, prompt, null, options with { MaxNewTokens = 3, Seed = seed }, 1, draft);
            int first = (int)result.Sequences[0][prompt.Length];
            firsts[first]++;
            counts[first, result.Sequences[0][prompt.Length + 1]]++;
            proposed += c.Proposed;
            accepted += c.Accepted;
        }
        Assert.InRange(accepted, 1, proposed - 1); // both branches ran
        for (int first = 0; first < vocab; first++)
        {
            if (firsts[first] < 200) continue; // too few draws after this first token to test its row
            for (int v = 0; v < vocab; v++)
            {
                double pv = p[first][v], sd = Math.Sqrt(pv * (1 - pv) / firsts[first]) + 1e-9;
                Assert.True(Math.Abs(counts[first, v] / (double)firsts[first] - pv) < 4.5 * sd,
                    $"after {first}: token {v} {counts[first, v] / (double)firsts[first]:0.0000} drawn ({firsts[first]} draws), p = {pv:0.0000}");
            }
        }
        Assert.True(Enumerable.Range(0, vocab).Count(f => firsts[f] >= 200) >= 2, "at least two first tokens' rows tested");
    }

    [Fact]
    public void The_drafts_distribution_travels_with_the_step()
    {
        var q = Enumerable.Range(0, 12).Select(i => i / 66f).ToArray();
        var input = new StageInput("r", 3, 0, null, new[] { new long[] { 1, 2, 3 } }, new[] { new long[] { 1, 1, 1 } }, new[] { new long[] { 0, 1, 2 } }, "path",
            new GenerationState(8, false, Array.Empty<long>(), 0, new[] { false }, new SamplingSettings(false, 0.7, 0, 1, 5), Drafts: new long[] { 2, 3 }, DraftProbs: q), 1, null);
        var back = (StageInput)MessageCodec.Decode(MessageCodec.Encode(input), MessageCodec.Manifest(input));
        Assert.Equal(q, back.Generation!.DraftProbs);
        Assert.Equal(new long[] { 2, 3 }, back.Generation.Drafts);
    }
}
