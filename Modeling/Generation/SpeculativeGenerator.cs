using ShardPipe.Modeling.Core;
using System.Diagnostics;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Models;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Generation;

/// <summary>What speculative decoding proposed and accepted over a generation.</summary>
public sealed record SpeculationCounts(int Steps, int Proposed, int Accepted)
{
    public double AcceptanceRate => Proposed > 0 ? (double)Accepted / Proposed : 0;
}

/// <summary>
/// Speculative decoding in one process (one row): each step runs the last accepted token plus up to k drafts
/// (<see cref="NgramProposer"/>, or a draft model's <see cref="DraftProposer"/>, sampled with q for a sampled request) through the model in one forward pass,
/// keeps what <see cref="Speculation.Verify"/> accepts and truncates the KV cache to it. The first step prefills the prompt alone and the drafts begin with
/// the second (<see cref="Speculation.DraftBudget"/>), as the pipeline does, so both give the same tokens.
/// </summary>
public static class SpeculativeGenerator
{
    public static (GenerationResult Result, SpeculationCounts Counts) Generate(CausalLMModel model, long[] prompt, long[]? attentionMask,
        GenerationOptions options, int k, CausalLMModel? draft = null)
    {
        Speculation.Validate(draft is null ? Speculation.Ngram : Speculation.Draft, k, 1, draft is null ? null : "draft");
        if (draft is not null) DraftModelCheck.CheckVocab(draft, model.VocabSize, draft.SourceFolder ?? "draft");
        using var proposer = draft is null ? null : new DraftProposer(draft);
        var stop = StopTokens.From(model.GenerationConfig, options.EosTokenIds, options.PadTokenId);
        var context = prompt.ToList();
        using var cache = new KvCache();
        using var sampler = new Sampler(!options.DoSample, options.Temperature, options.TopK, options.TopP, options.Seed, options.RepetitionPenalty);
        // A draft model samples its drafts for a sampled request (q kept for the verdict); prompt lookup's are deterministic.
        DraftProposal propose(IReadOnlyList<long> c, int n, int firstIndex) =>
            proposer is null ? new DraftProposal(NgramProposer.Propose(c, n), null) : proposer.Propose(c, n, sampler, firstIndex);
        var sw = Stopwatch.StartNew();
        double prefill = 0;
        int produced = 0, steps = 0, proposed = 0, accepted = 0;
        var proposal = propose(context, Speculation.DraftBudget(k, 0, options.MaxNewTokens), 0);
        var drafts = proposal.Tokens;
        var (ids, mask, positions) = Speculation.AppendDrafts(new[] { prompt }, new[] { attentionMask ?? Enumerable.Repeat(1L, prompt.Length).ToArray() },
            DecodeRule.PositionsFromMask(new[] { attentionMask ?? Enumerable.Repeat(1L, prompt.Length).ToArray() }), drafts);
        while (true)
        {
            using var scope = NewDisposeScope();
            var logits = model.Forward(IdRows.ToTensor(ids), IdRows.ToTensor(mask), IdRows.ToTensor(positions), cache); // (1, T, V)
            var verdict = Speculation.Verify(sampler, logits[0].narrow(0, logits.Shape()[1] - drafts.Length - 1, drafts.Length + 1), drafts, context, produced, proposal.Probs);
            var (tokens, finished) = Speculation.Deliver(verdict.Tokens, produced, options.MaxNewTokens, stop.Eos, options.IgnoreEos);
            steps++;
            proposed += drafts.Length;
            accepted += Math.Min(verdict.Accepted, tokens.Length);
            foreach (var t in tokens) options.OnToken?.Invoke(new[] { t });
            context.AddRange(tokens);
            produced += tokens.Length;
            if (steps == 1) prefill = sw.Elapsed.TotalSeconds;
            if (finished || produced >= options.MaxNewTokens) break;
            proposal = propose(context, Speculation.DraftBudget(k, produced, options.MaxNewTokens), produced);
            var next = Speculation.NextInput(mask[0], drafts.Length, tokens.Length, tokens[^1], proposal.Tokens);
            cache.Truncate(next.Mask.Length - next.Ids.Length);
            (ids, mask, positions, drafts) = (new[] { next.Ids }, new[] { next.Mask }, new[] { next.Positions }, proposal.Tokens);
        }
        double total = sw.Elapsed.TotalSeconds;
        return (new GenerationResult(new[] { context.ToArray() }, produced, prefill, total - prefill), new SpeculationCounts(steps, proposed, accepted));
    }
}
