using ShardPipe.Modeling.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Generation;

/// <summary>
/// Speculative decoding's rules (pure), in one place for the single-process loop (<see cref="SpeculativeGenerator"/>)
/// and the pipeline's head stage. A step feeds the target the last accepted token plus up to k draft tokens; the
/// target's logits at those k + 1 positions decide, by the standard rule, how many drafts are accepted and which token
/// follows them (<see cref="SpeculativeAcceptance"/>). Greedy requests get exactly the tokens of plain greedy decoding;
/// sampled ones tokens distributed exactly as the target's, reproducible from their seed (<see cref="TokenRandom"/>).
/// </summary>
public static class Speculation
{
    /// <summary>Methods that propose drafts: "ngram" (prompt lookup) and "draft" (a small model, <see cref="DraftProposer"/>).</summary>
    public const string Ngram = "ngram";

    /// <summary>Drafts proposed by a small model with the target's vocabulary (<c>--draft-model</c>): greedily for a greedy request, sampled from the draft's processed distribution for a sampled one.</summary>
    public const string Draft = "draft";

    /// <summary>The most draft tokens a step may carry.</summary>
    public const int MaxTokens = 32;

    /// <summary>Why a method and draft count cannot run (a typed error at the caller), or null when they can.</summary>
    public static void Validate(string method, int tokens, int rows, string? draftModel = null)
    {
        if (method != Ngram && method != Draft) throw new InvalidInputException($"speculate must be \"{Ngram}\" or \"{Draft}\", not \"{method}\"");
        if (method == Draft && string.IsNullOrWhiteSpace(draftModel)) throw new InvalidInputException($"speculate \"{Draft}\" needs a draft model (--draft-model)");
        if (method == Ngram && draftModel is not null) throw new InvalidInputException($"a draft model goes with speculate \"{Draft}\", not \"{Ngram}\"");
        if (tokens < 1 || tokens > MaxTokens) throw new InvalidInputException($"num_speculative_tokens must be in 1..{MaxTokens}, not {tokens}");
        if (rows != 1) throw new InvalidInputException($"speculative decoding takes one row per request (the rows of a batch would accept different numbers of tokens); this request has {rows}");
    }

    /// <summary>
    /// How many drafts a step may carry: at most <paramref name="k"/>, and never more than the token budget can
    /// take after the step's own token (so no draft ever lies past the request's last position). None on the first
    /// step (<paramref name="produced"/> 0): the prompt runs alone, as in plain decoding, and the drafts come with the
    /// later steps, whose few positions (k + 1 ≤ 8) attend through the decode-attention kernel as single-row decode does.
    /// A prompt carrying its drafts attended through libtorch's attention instead, whose bf16 results for the drafts'
    /// positions differ from decode's (≈ 70 % of a 2-layer model's logits, by up to 0.016), so a near-tie could make a
    /// greedy speculative request part from plain decoding (BENCHMARKS.md, session 19). A request resumed after a node's
    /// loss (<paramref name="produced"/> &gt; 0) does carry drafts with its prefill: its steps then fall where the fault-free
    /// run's did, which a sampled request needs to resume with the same tokens (each draft and verdict drawn per token).
    /// </summary>
    public static int DraftBudget(int k, int produced, int maxNewTokens) =>
        produced == 0 ? 0 : Math.Max(0, Math.Min(k, maxNewTokens - produced - 1));

    /// <summary>
    /// The tokens a step delivers after the budget and eos: at most <paramref name="maxNewTokens"/> − <paramref name="produced"/>,
    /// cut after the first eos (unless eos is ignored). <c>Finished</c>: the row ended on an eos.
    /// </summary>
    public static (long[] Tokens, bool Finished) Deliver(long[] accepted, int produced, int maxNewTokens, IReadOnlyCollection<long> eos, bool ignoreEos)
    {
        int take = Math.Min(accepted.Length, maxNewTokens - produced);
        for (int i = 0; i < take; i++)
            if (DecodeRule.EndsRow(accepted[i], eos, ignoreEos)) return (accepted[..(i + 1)], true);
        return (accepted[..take], false);
    }

    /// <summary>
    /// The step after a verification: the cache keeps the positions up to the last accepted draft (the mask so far
    /// minus the rejected drafts; the stages roll back to it from the mask's length), and the new input is the
    /// step's last token followed by the new drafts, with their mask and positions. One row.
    /// </summary>
    public static (long[] Ids, long[] Mask, long[] Positions) NextInput(long[] mask, int drafted, int delivered, long last, long[] drafts)
    {
        int acceptedDrafts = delivered - 1;
        int keep = mask.Length - drafted + acceptedDrafts;
        var grown = mask.Take(keep).Concat(Enumerable.Repeat(1L, 1 + drafts.Length)).ToArray();
        var positions = DecodeRule.PositionsFromMask(new[] { grown })[0];
        return (new[] { last }.Concat(drafts).ToArray(), grown, positions[^(1 + drafts.Length)..]);
    }

    /// <summary>A step's ids, mask and positions with the drafts appended (the step that ends a prefill also verifies drafts).</summary>
    public static (long[][] Ids, long[][] Mask, long[][] Positions) AppendDrafts(long[][] ids, long[][] maskSoFar, long[][] positions, long[] drafts)
    {
        if (drafts.Length == 0) return (ids, maskSoFar, positions);
        var mask = maskSoFar.Select(r => r.Concat(Enumerable.Repeat(1L, drafts.Length)).ToArray()).ToArray();
        var all = DecodeRule.PositionsFromMask(mask);
        return (ids.Select(r => r.Concat(drafts).ToArray()).ToArray(), mask,
            positions.Select((r, b) => r.Concat(all[b][^drafts.Length..]).ToArray()).ToArray());
    }

    /// <summary>
    /// The target's verdict on a step (one row): <paramref name="logits"/> (1 + d, V) at the last accepted token and
    /// the d drafts; <paramref name="context"/> the ids so far (prompt and accepted tokens: the repetition penalty's
    /// history, each draft position seeing the drafts before it); <paramref name="firstIndex"/> the index, among the
    /// request's new tokens, of the step's first token; <paramref name="draftProbs"/> the draft's distribution q at each
    /// draft (d rows of V, flattened; <see cref="DraftProposal.Probs"/>), or null for drafts proposed deterministically
    /// (prompt lookup, a greedy draft: q a point mass). Returns the accepted drafts plus the target's own next token.
    /// </summary>
    public static (long[] Tokens, int Accepted) Verify(Sampler sampler, Tensor logits, long[] drafts, IReadOnlyList<long> context, int firstIndex, float[]? draftProbs = null)
    {
        if (logits.Shape()[0] != drafts.Length + 1) throw new ArgumentException($"verification needs {drafts.Length + 1} positions of logits, got {logits.Shape()[0]}");
        var histories = Enumerable.Range(0, drafts.Length + 1).Select(j => (IReadOnlyCollection<long>)context.Concat(drafts.Take(j)).ToArray()).ToArray();
        if (sampler.IsGreedy)
        {
            var targets = sampler.Next(logits, histories);
            var tokens = SpeculativeAcceptance.Greedy(targets, drafts);
            return (tokens, tokens.Length - 1);
        }
        using var scope = NewDisposeScope();
        var dist = sampler.Distribution(logits, histories).contiguous();
        long vocab = dist.Shape()[1];
        var flat = dist.data<float>().ToArray();
        var rows = Enumerable.Range(0, drafts.Length + 1).Select(j => new ReadOnlyMemory<float>(flat, (int)(j * vocab), (int)vocab)).ToArray();
        ReadOnlyMemory<float>[]? q = null;
        if (draftProbs is not null)
        {
            if (draftProbs.Length != drafts.Length * vocab)
                throw new InvalidInputException($"the draft's distributions hold {draftProbs.Length} probabilities; {drafts.Length} drafts over a vocabulary of {vocab} need {drafts.Length * vocab}");
            q = Enumerable.Range(0, drafts.Length).Select(j => new ReadOnlyMemory<float>(draftProbs, (int)(j * vocab), (int)vocab)).ToArray();
            for (int j = 0; j < q.Length; j++)
            {
                double sum = 0;
                foreach (float v in q[j].Span)
                {
                    if (!float.IsFinite(v) || v < 0) throw new InvalidInputException($"the draft's distribution at draft {j} holds {v}: probabilities must be finite and non-negative");
                    sum += v;
                }
                if (Math.Abs(sum - 1) > 1e-3) throw new InvalidInputException($"the draft's distribution at draft {j} sums to {sum:g6}, not 1");
            }
        }
        var sampled = SpeculativeAcceptance.Sample(rows, drafts, sampler.Seed, firstIndex, q);
        return (sampled, sampled.Length - 1);
    }
}

/// <summary>
/// Prompt lookup (pure): proposes the continuation of the most recent earlier occurrence of the context's last
/// n-gram, n from <c>maxN</c> down to <c>minN</c>. A continuation that runs into the end of the context goes on
/// copying its own proposals, so a repetition of any period is proposed k tokens deep.
/// </summary>
public static class NgramProposer
{
    public static long[] Propose(IReadOnlyList<long> context, int k, int maxN = 3, int minN = 1)
    {
        if (k <= 0) return Array.Empty<long>();
        int count = context.Count;
        for (int n = Math.Min(maxN, count - 1); n >= minN; n--)
        {
            // The most recent start i < count − n where context[i..i+n) equals the last n tokens.
            for (int i = count - n - 1; i >= 0; i--)
            {
                bool match = true;
                for (int j = 0; j < n && match; j++) match = context[i + j] == context[count - n + j];
                if (!match) continue;
                var proposal = new long[k];
                for (int m = 0; m < k; m++)
                {
                    int at = i + n + m;
                    proposal[m] = at < count ? context[at] : proposal[at - count];
                }
                return proposal;
            }
        }
        return Array.Empty<long>();
    }
}

/// <summary>
/// The standard acceptance rule (pure), the one home of speculative decoding's verdict. Greedy: the longest prefix of
/// drafts that equals the target's argmax at each position, plus the target's token after it. Sampling (rejection
/// sampling, which keeps the target's distribution p exactly whatever the draft's q): accept draft x with probability
/// min(1, p(x)/q(x)); at the first rejection draw from norm(max(0, p − q)) and stop; if every draft is accepted draw the
/// next token from p at the last position. Deterministic drafts (prompt lookup, a greedy draft model) are the point
/// mass q = δx: accept with p(x), else draw from p with x removed. A sampled draft is drawn from q here too
/// (<see cref="Propose"/>), from its own stream. Each token's draws come from its own generator
/// (<see cref="TokenRandom"/>), so the tokens depend only on the seed, the context and the drafts — never on how many
/// draws earlier steps used.
/// </summary>
public static class SpeculativeAcceptance
{
    /// <summary>The <see cref="TokenRandom"/> stream a draft model samples its proposals from (the verdict's is stream 0).</summary>
    public const ulong DraftStream = 1;

    /// <summary><paramref name="targets"/>: the target's token at each of the d + 1 positions.</summary>
    public static long[] Greedy(long[] targets, long[] drafts)
    {
        if (targets.Length != drafts.Length + 1) throw new ArgumentException($"{drafts.Length} drafts need {drafts.Length + 1} target tokens, got {targets.Length}");
        int a = 0;
        while (a < drafts.Length && drafts[a] == targets[a]) a++;
        return targets[..(a + 1)];
    }

    /// <summary>
    /// A sampled draft: the token drawn from the draft's processed distribution <paramref name="q"/> for the request's
    /// new token number <paramref name="tokenIndex"/>, from the draft stream of the request's <paramref name="seed"/>
    /// (independent of the verdict's draws, and the same on a rerun or a resumed request).
    /// </summary>
    public static long Propose(ReadOnlySpan<float> q, long seed, int tokenIndex) =>
        Draw(q, default, new TokenRandom(seed, tokenIndex, DraftStream).NextDouble(), exclude: -1);

    /// <summary>
    /// <paramref name="probs"/>: the target's distribution at each of the d + 1 positions; <paramref name="draftProbs"/>:
    /// the draft's distribution q at each of the d drafts, or null for deterministic drafts (q a point mass at each).
    /// </summary>
    public static long[] Sample(IReadOnlyList<ReadOnlyMemory<float>> probs, long[] drafts, long seed, int firstIndex, IReadOnlyList<ReadOnlyMemory<float>>? draftProbs = null)
    {
        if (probs.Count != drafts.Length + 1) throw new ArgumentException($"{drafts.Length} drafts need {drafts.Length + 1} distributions, got {probs.Count}");
        if (draftProbs is not null && draftProbs.Count != drafts.Length) throw new ArgumentException($"{drafts.Length} drafts need {drafts.Length} draft distributions, got {draftProbs.Count}");
        var tokens = new List<long>();
        for (int j = 0; j < drafts.Length; j++)
        {
            var rng = new TokenRandom(seed, firstIndex + j);
            var p = probs[j].Span;
            var q = draftProbs is null ? default : draftProbs[j].Span;
            long x = drafts[j];
            bool inVocab = x >= 0 && x < p.Length;
            double px = inVocab ? p[(int)x] : 0;
            double qx = draftProbs is null ? 1 : inVocab && x < q.Length ? q[(int)x] : 0;
            // u < min(1, p(x)/q(x)) (u < 1 always): a draft q never proposes (q(x) = 0) is rejected.
            if (qx > 0 && rng.NextDouble() * qx < px)
            {
                tokens.Add(x);
                continue;
            }
            tokens.Add(Draw(p, q, rng.NextDouble(), exclude: draftProbs is null ? x : -1));
            return tokens.ToArray();
        }
        tokens.Add(Draw(probs[drafts.Length].Span, default, new TokenRandom(seed, firstIndex + drafts.Length).NextDouble(), exclude: -1));
        return tokens.ToArray();
    }

    /// <summary>
    /// Inverse-CDF draw, with u in [0, 1), from the residual norm(max(0, p − q)) — or, with <paramref name="q"/> empty,
    /// from <paramref name="p"/> without <paramref name="exclude"/> (max(0, p − δx)), renormalised. A residual with no
    /// mass (p equal to q up to rounding, where a rejection has probability 0) draws from p.
    /// </summary>
    private static long Draw(ReadOnlySpan<float> p, ReadOnlySpan<float> q, double u, long exclude)
    {
        bool residual = q.Length > 0;
        if (residual && q.Length != p.Length) throw new ArgumentException($"the draft's distribution has {q.Length} entries, the target's {p.Length}");
        double Weight(ReadOnlySpan<float> p, ReadOnlySpan<float> q, int i) =>
            i == exclude ? 0 : residual ? Math.Max(0.0, (double)p[i] - q[i]) : p[i];
        double total = 0;
        for (int i = 0; i < p.Length; i++) total += Weight(p, q, i);
        if (total <= 0)
        {
            if (!residual) throw new InvalidOperationException("the target's distribution has no mass outside the rejected draft");
            return Draw(p, default, u, exclude: -1);
        }
        double target = u * total, acc = 0;
        int lastPositive = -1;
        for (int i = 0; i < p.Length; i++)
        {
            double w = Weight(p, q, i);
            if (w <= 0) continue;
            lastPositive = i;
            acc += w;
            if (target < acc) return i;
        }
        return lastPositive; // rounding: u·total reached the sum
    }
}

/// <summary>
/// A token's own random numbers for speculative sampling: SplitMix64 seeded from the request's seed and the token's
/// index among its new tokens. A resumed request (whose steps start at an earlier step's boundary) draws exactly
/// what the fault-free run drew.
/// </summary>
public struct TokenRandom
{
    private ulong _state;

    /// <param name="stream">Which of the token's independent streams (0: the verdict's; <see cref="SpeculativeAcceptance.DraftStream"/>: a sampled draft's).</param>
    public TokenRandom(long seed, int tokenIndex, ulong stream = 0)
    {
        _state = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL ^ ((ulong)tokenIndex + 1) * 0xD1B54A32D192ED03UL ^ stream * 0xA0761D6478BD642FUL);
        Next(); // one round of mixing before the first number
    }

    private ulong Next()
    {
        unchecked
        {
            ulong z = _state += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }

    /// <summary>Uniform in [0, 1), 53 bits.</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));
}
