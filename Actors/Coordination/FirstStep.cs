using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Actors.Transport;
using ShardPipe.Actors.Workers;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// A client's request as the pipeline's first step (pure): input ids checked against the loaded model, the mask
/// and positions HF would use (forward: <c>0..T−1</c> unless given; generate: from the mask), and for generation
/// the stop tokens and sampler settings that travel with it.
/// </summary>
public static class FirstStep
{
    /// <summary>The step for hop 0, or the reason the request cannot run.</summary>
    /// <param name="maxNewTokens">The most new tokens a request may ask for (the node setting, at least the model's positions).</param>
    public static (StageInput? Step, string? Error) Build(IClientRequest request, ModelRecord model, string replyTo, string coordinator, int maxNewTokens = int.MaxValue)
    {
        var ids = request.InputIds;
        if (ids.Length == 0 || ids[0].Length == 0 || ids.Any(r => r.Length != ids[0].Length))
            return (null, "input_ids must be non-empty rows of equal length");
        if (ids[0].Length > model.MaxPositions)
            return (null, $"the prompt has {ids[0].Length} tokens; the model takes at most {model.MaxPositions} positions");
        if (ids.SelectMany(r => r).Any(id => id < 0 || id >= model.Vocab))
            return (null, $"a token id is outside the vocabulary (0..{model.Vocab - 1})");
        var mask = request.AttentionMask ?? DecodeRule.FullMask(ids);
        if (mask.Length != ids.Length || mask.Any(r => r.Length != ids[0].Length || r.Any(m => m is not (0 or 1))))
            return (null, "attention_mask must have the shape of input_ids and hold only 0 and 1");
        switch (request)
        {
            case Forward f:
                var positions = f.PositionIds ?? DecodeRule.ForwardPositions(ids);
                if (positions.Length != ids.Length || positions.Any(r => r.Length != ids[0].Length))
                    return (null, "position_ids must have the shape of input_ids");
                return (new StageInput(f.RequestId, 0, 0, null, ids, mask, positions, replyTo, null, model.PlanEpoch, coordinator), null);
            case Generate g:
                if (g.MaxNewTokens < 1) return (null, $"max_new_tokens must be at least 1, not {g.MaxNewTokens}");
                if (g.MaxNewTokens > maxNewTokens) return (null, $"max_new_tokens {g.MaxNewTokens} exceeds this cluster's limit of {maxNewTokens} (shardpipe.max-new-tokens)");
                if (DecodeRule.PastPositions(ids[0].Length, g.MaxNewTokens, model.MaxPositions) is { } tooLong) return (null, tooLong);
                var finished = new bool[ids.Length];
                int step = 0;
                if (g.Resume is { Length: > 0 } resume)
                {
                    // A request resumed after a fault: the prompt plus the tokens already delivered are prefilled, and
                    // decoding continues at the next step, with the rows that already stopped still stopped.
                    if (resume.Length >= g.MaxNewTokens || resume.Any(t => t is null || t.Length != ids.Length))
                        return (null, $"resume holds {resume.Length} steps; it must be fewer than max_new_tokens ({g.MaxNewTokens}), each with one token per row");
                    if (ids[0].Length + resume.Length > model.MaxPositions)
                        return (null, $"the prompt plus {resume.Length} resumed tokens exceed the model's {model.MaxPositions} positions");
                    if (resume.SelectMany(t => t).Any(id => id < 0 || id >= model.Vocab))
                        return (null, $"a resumed token id is outside the vocabulary (0..{model.Vocab - 1})");
                    foreach (var t in resume)
                        for (int b = 0; b < ids.Length; b++)
                            if (DecodeRule.EndsRow(t[b], model.EosTokenIds, g.IgnoreEos)) finished[b] = true;
                    ids = ids.Select((row, b) => row.Concat(resume.Select(t => t[b])).ToArray()).ToArray();
                    mask = mask.Select(row => row.Concat(Enumerable.Repeat(1L, resume.Length)).ToArray()).ToArray();
                    step = resume.Length;
                }
                if (g.PrefillChunk < 0) return (null, $"prefill_chunk must be 0 (whole prompt) or positive, not {g.PrefillChunk}");
                if (g.Speculate is { } spec && SpeculativeSteps.Refusal(spec, ids.Length) is { } refused) return (null, refused);
                var first = ChunkedPrefill.First(ids, mask, DecodeRule.PositionsFromMask(mask), g.PrefillChunk);
                var state = new GenerationState(g.MaxNewTokens, g.IgnoreEos, model.EosTokenIds, model.PadTokenId, finished, g.Sampling,
                    g.Sampling.RepetitionPenalty != 1.0 || g.Speculate is not null ? ids : null, // the ids so far travel only when a penalty or prompt lookup needs them
                    PromptRestWire.ToWire(first.Rest), g.Speculate);
                var input = new StageInput(g.RequestId, step, 0, null, first.Ids, first.Mask, first.Positions, replyTo, state, model.PlanEpoch, coordinator);
                // A speculative request's prefill (its last chunk) carries drafts only when it resumes a request with tokens
                // already (Speculation.DraftBudget: none on the first step, whose prompt runs alone as in plain decoding).
                return (first.Rest is null ? SpeculativeSteps.WithDrafts(input) : input, null);
            default:
                return (null, $"unknown request type {request.GetType().Name}");
        }
    }
}
