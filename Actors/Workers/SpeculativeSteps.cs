using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using static TorchSharp.torch;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// Speculative decoding in the pipeline (pure, over the wire messages): a speculative request's step carries its
/// last accepted token plus its drafts (<see cref="GenerationState.Drafts"/>) and runs k + 1 positions wide at every
/// stage — a multi-token segment of a merged step, like a prefill chunk. The norm and head keep the last
/// <see cref="Kept"/> positions of it; the head verifies (<see cref="Decide"/>), reports every accepted token in one
/// <see cref="TokensGenerated"/>, and loops the next step whose mask ends at the last accepted position, so that each
/// stage rolls its cache back to it (<see cref="CacheLength"/>) without another message.
/// </summary>
public static class SpeculativeSteps
{
    /// <summary>Why a request's speculation settings cannot run, or null.</summary>
    public static string? Refusal(SpeculationSettings spec, int rows)
    {
        try
        {
            Speculation.Validate(spec.Method, spec.Tokens, rows, spec.DraftModel);
            return null;
        }
        catch (ShardPipeException ex)
        {
            return ex.Message;
        }
    }

    /// <summary>
    /// The step with drafts proposed from its context appended, if the request speculates by prompt lookup and its
    /// prompt is all in. A draft model's drafts are left to the first stage (<see cref="DraftStage"/>).
    /// </summary>
    public static StageInput WithDrafts(StageInput s)
    {
        if (s.Generation is not { Speculate: { Method: Speculation.Ngram } spec, Prefill: null, History: { Length: 1 } history } st || s.InputIds is null) return s;
        var drafts = NgramProposer.Propose(history[0], Speculation.DraftBudget(spec.Tokens, s.Step, st.MaxNewTokens));
        var (ids, mask, positions) = Speculation.AppendDrafts(s.InputIds, s.AttentionMask, s.PositionIds, drafts);
        return s with { InputIds = ids, AttentionMask = mask, PositionIds = positions, Generation = st with { Drafts = drafts, DraftProbs = null } };
    }

    /// <summary>Positions of a step that the final norm and head need: the last token and every draft (1 for a plain step).</summary>
    public static int Kept(StageInput s) => s.Generation is { Speculate: not null, Prefill: null, Drafts: { } d } ? 1 + d.Length : 1;

    /// <summary>
    /// The cache length a step of <paramref name="tokens"/> positions starts from: its mask covers every position so far
    /// and its own; a cache holding more keeps rejected drafts of the step before, dropped here.
    /// </summary>
    public static long CacheLength(StageInput s, long tokens) => s.AttentionMask[0].Length - tokens;

    /// <summary>What the head's verification decided: the message for the caller, and the next step unless the request is done.</summary>
    public readonly record struct Verdict(TokensGenerated Tokens, StageInput? Next, int Produced);

    /// <summary>
    /// The head on a speculative step (one row): <paramref name="logits"/> (1 + d, V) at the last token and the d drafts.
    /// </summary>
    public static Verdict Decide(StageInput input, Tensor logits, Sampler sampler)
    {
        var st = input.Generation!;
        var drafts = st.Drafts ?? Array.Empty<long>();
        var context = st.History?[0] ?? throw new ProtocolException($"request {input.RequestId}: a speculative step came without its ids so far");
        var verdict = Speculation.Verify(sampler, logits, drafts, context, input.Step, st.DraftProbs);
        var (tokens, finished) = Speculation.Deliver(verdict.Tokens, input.Step, st.MaxNewTokens, st.EosTokenIds, st.IgnoreEos);
        var message = new TokensGenerated(input.RequestId, input.Step, new[] { tokens[0] },
            tokens.Length > 1 ? tokens.Skip(1).Select(t => new[] { t }).ToArray() : null, drafts.Length, Math.Min(verdict.Accepted, tokens.Length));
        int produced = input.Step + tokens.Length;
        if (finished || produced >= st.MaxNewTokens) return new Verdict(message, null, produced);
        var grown = context.Concat(tokens).ToArray();
        // Prompt lookup proposes here; a draft model's proposals are made at the first stage (Drafts null until then).
        var next = st.Speculate!.Method == Speculation.Ngram ? NgramProposer.Propose(grown, Speculation.DraftBudget(st.Speculate.Tokens, produced, st.MaxNewTokens)) : null;
        var (ids, mask, positions) = Speculation.NextInput(input.AttentionMask[0], drafts.Length, tokens.Length, tokens[^1], next ?? Array.Empty<long>());
        return new Verdict(message, input with
        {
            Step = produced, Hop = 0, Hidden = null, InputIds = new[] { ids }, AttentionMask = new[] { mask }, PositionIds = new[] { positions },
            Generation = st with { Finished = new[] { finished }, History = new[] { grown }, Drafts = next, DraftProbs = null },
        }, produced);
    }
}
