using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// Speculative decoding with a draft model in the pipeline: the first stage (the hop that embeds) proposes a
/// speculative request's drafts before it runs the step, on its compute thread. The draft model is loaded once per
/// process (<see cref="DraftModels"/>, from the folder the request names, checked against the target's vocabulary);
/// each request keeps its own <see cref="DraftProposer"/> (and KV cache) here until it is released. A sampled request's
/// drafts are sampled from the draft's distribution under the request's own settings, and that distribution q travels
/// with the step (<see cref="GenerationState.DraftProbs"/>) to the head, whose rejection rule needs it. The head's verdict
/// loops the next step back with no drafts (<see cref="GenerationState.Drafts"/> null), and they are filled in here —
/// so the draft's cache follows the accepted tokens, and a resumed request (perhaps on another node) simply prefills
/// its context into a new one.
/// </summary>
public sealed class DraftStage : IDisposable
{
    private readonly long _targetVocab;
    private readonly Dictionary<string, DraftProposer> _proposers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Sampler> _samplers = new(StringComparer.Ordinal); // a sampled request's settings for its draft's q

    public DraftStage(long targetVocab) => _targetVocab = targetVocab;

    /// <summary>Whether the step is a draft-model request's step whose drafts are still to be proposed (its prompt all in).</summary>
    public static bool Needs(StageInput s) =>
        s is { InputIds: not null, Generation: { Speculate: { Method: Speculation.Draft }, Prefill: null, Drafts: null, History.Length: 1 } };

    /// <summary>Requests holding a draft cache here.</summary>
    public int Active => _proposers.Count;

    /// <summary>Bytes of the draft caches held here (counted with the stage's request caches against its KV byte budget).</summary>
    public long CacheBytes => _proposers.Values.Sum(p => p.CacheBytes);

    /// <summary>The step with the draft model's proposals appended (as prompt lookup's are), or the step unchanged.</summary>
    public StageInput Fill(StageInput s)
    {
        if (!Needs(s)) return s;
        var st = s.Generation!;
        var spec = st.Speculate!;
        if (!_proposers.TryGetValue(s.RequestId, out var proposer))
        {
            var model = DraftModels.Get(spec.DraftModel ?? throw new InvalidInputException("speculate \"draft\" needs a draft model"), _targetVocab);
            _proposers[s.RequestId] = proposer = new DraftProposer(model);
        }
        var g = st.Sampling;
        Sampler? sampler = null;
        if (!Sampler.IsGreedyRule(g.Greedy, g.Temperature) && !_samplers.TryGetValue(s.RequestId, out sampler))
            _samplers[s.RequestId] = sampler = new Sampler(g.Greedy, g.Temperature, g.TopK, g.TopP, g.Seed, g.RepetitionPenalty);
        // s.Step counts the request's tokens so far: the first draft is token number s.Step, as the head numbers it.
        var proposal = proposer.Propose(st.History![0], Speculation.DraftBudget(spec.Tokens, s.Step, st.MaxNewTokens), sampler, s.Step);
        var (ids, mask, positions) = Speculation.AppendDrafts(s.InputIds!, s.AttentionMask, s.PositionIds, proposal.Tokens);
        return s with { InputIds = ids, AttentionMask = mask, PositionIds = positions, Generation = st with { Drafts = proposal.Tokens, DraftProbs = proposal.Probs } };
    }

    public void Release(string requestId)
    {
        if (_proposers.Remove(requestId, out var p)) p.Dispose();
        if (_samplers.Remove(requestId, out var sampler)) sampler.Dispose();
    }

    public void Dispose()
    {
        foreach (var p in _proposers.Values) p.Dispose();
        _proposers.Clear();
        foreach (var sampler in _samplers.Values) sampler.Dispose();
        _samplers.Clear();
    }
}
