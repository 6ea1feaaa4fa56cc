using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// Speculative decoding with a draft model in the pipeline: the first stage (the hop that embeds) proposes a
/// speculative request's drafts before it runs the step, on its compute thread. The draft model is loaded once per
/// process (<see cref="DraftModels"/>, from the folder the request names, checked against the target's vocabulary);
/// each request keeps its own <see cref="DraftProposer"/> (and KV cache) here until it is released. The head's verdict
/// loops the next step back with no drafts (<see cref="GenerationState.Drafts"/> null), and they are filled in here —
/// so the draft's cache follows the accepted tokens, and a resumed request (perhaps on another node) simply prefills
/// its context into a new one.
/// </summary>
public sealed class DraftStage : IDisposable
{
    private readonly long _targetVocab;
    private readonly Dictionary<string, DraftProposer> _proposers = new(StringComparer.Ordinal);

    public DraftStage(long targetVocab) => _targetVocab = targetVocab;

    /// <summary>Whether the step is a draft-model request's step whose drafts are still to be proposed (its prompt all in).</summary>
    public static bool Needs(StageInput s) =>
        s is { InputIds: not null, Generation: { Speculate: { Method: Speculation.Draft }, Prefill: null, Drafts: null, History.Length: 1 } };

    /// <summary>Requests holding a draft cache here.</summary>
    public int Active => _proposers.Count;

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
        var drafts = proposer.Propose(st.History![0], Speculation.DraftBudget(spec.Tokens, s.Step, st.MaxNewTokens));
        var (ids, mask, positions) = Speculation.AppendDrafts(s.InputIds!, s.AttentionMask, s.PositionIds, drafts);
        return s with { InputIds = ids, AttentionMask = mask, PositionIds = positions, Generation = st with { Drafts = drafts } };
    }

    public void Release(string requestId)
    {
        if (_proposers.Remove(requestId, out var p)) p.Dispose();
    }

    public void Dispose()
    {
        foreach (var p in _proposers.Values) p.Dispose();
        _proposers.Clear();
    }
}
