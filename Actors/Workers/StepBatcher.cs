using ShardPipe.Actors.Settings;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// Continuous batching at one stage, as a pure decision: the steps that arrived (from the stage before, or new requests
/// from the coordinator) and which of them run together next. Steps of different requests at the same hop run as one
/// merged step, so a stage reads its weights once for all of them; requests join and leave between steps.
/// <para>At the first hop, steps circulate in groups (a merged step's outputs travel on together as one
/// <see cref="StageBatch"/>). A new request joins the next group that passes the first hop rather than starting a group of
/// its own — unless fewer than <see cref="BatchingSettings.MicroBatches"/> groups are out, or it has waited
/// <see cref="BatchingSettings.HoldLimit"/> — so that concurrent requests converge into few, full steps. A group is out from
/// its dispatch until each of its requests came back or was released; one not back within the hold limit is forgotten.</para>
/// <para>Prompts arriving together (<see cref="ArrivingPrompts"/>): a group made only of new prompts holds no one — a
/// prompt arriving while only such groups are out starts at once in a group of its own, so its prefill runs on the
/// first stage while the earlier prompts' prefill runs on the next ones (rather than waiting for their whole round
/// trip). Groups converge again at the first hop: while more than micro-batches groups are out, a group that comes
/// back waits (at most hold-limit) for another to come back and runs with it as one step.</para>
/// </summary>
public sealed class StepBatcher
{
    private readonly BatchingSettings _settings;
    private readonly List<(StageInput Step, DateTime Arrived)> _pending = new();
    private readonly List<(HashSet<string> Ids, DateTime Sent, bool Prompts)> _groups = new();

    public StepBatcher(BatchingSettings settings)
    {
        if (settings.MaxRows < 1 || settings.MaxTokens < 1 || settings.MicroBatches < 1)
            throw new ArgumentException("batching: max-rows, max-tokens and micro-batches must be at least 1");
        _settings = settings;
    }

    public int Pending => _pending.Count;
    /// <summary>Groups dispatched from the first hop and not yet back.</summary>
    public int GroupsOut => _groups.Count;

    public void Add(StageInput step, DateTime now) => _pending.Add((step, now));

    /// <summary>A request ended (finished, cancelled, failed): its group no longer waits for it; its waiting steps are dropped.</summary>
    public void Released(string requestId)
    {
        _pending.RemoveAll(p => p.Step.RequestId == requestId);
        foreach (var g in _groups) g.Ids.Remove(requestId);
        _groups.RemoveAll(g => g.Ids.Count == 0);
    }

    /// <summary>Empties the queue (the steps cannot be scheduled): returns what was waiting.</summary>
    public IReadOnlyList<StageInput> DropAll()
    {
        var all = _pending.Select(p => p.Step).ToList();
        _pending.Clear();
        _groups.Clear();
        return all;
    }

    /// <summary>Rows and positions a step brings to a merged step.</summary>
    public static (long Rows, long Tokens) Size(StageInput s)
    {
        long rows = s.AttentionMask.Length;
        long t = s.InputIds is { Length: > 0 } ids ? ids[0].Length : s.Hidden is { Shape.Length: 3 } h ? h.Shape[1] : 1;
        return (rows, rows * t);
    }

    /// <summary>
    /// The steps to run now as one merged step (in arrival order), or none while every waiting step is held. The
    /// first startable step leads: a forward pass runs alone; a generation step takes along every other waiting
    /// generation step of its hop — held new requests too — within the row and position caps.
    /// </summary>
    public IReadOnlyList<StageInput> Take(DateTime now)
    {
        _groups.RemoveAll(g => now - g.Sent > _settings.HoldLimit); // lost (a failure elsewhere) or slow: no longer waited for
        int lead = _pending.FindIndex(p => !Held(p.Step, p.Arrived, now));
        if (lead < 0) return Array.Empty<StageInput>();
        var first = _pending[lead].Step;
        var taken = new List<int> { lead };
        if (first.Generation is not null)
        {
            var (rows, tokens) = Size(first);
            for (int i = 0; i < _pending.Count; i++)
            {
                var s = _pending[i].Step;
                if (i == lead || s.Hop != first.Hop || s.Generation is null || s.PlanEpoch != first.PlanEpoch) continue;
                var (r, t) = Size(s);
                if (rows + r > _settings.MaxRows || tokens + t > _settings.MaxTokens) continue;
                rows += r;
                tokens += t;
                taken.Add(i);
            }
        }
        taken.Sort();
        var batch = taken.Select(i => _pending[i].Step).ToList();
        for (int i = taken.Count - 1; i >= 0; i--) _pending.RemoveAt(taken[i]);
        if (first.Hop == 0 && first.Generation is not null)
        {
            var ids = batch.Select(s => s.RequestId).ToHashSet(StringComparer.Ordinal);
            bool prompts = batch.All(s => ArrivingPrompts.IsNewPrompt(s, InGroup(s.RequestId)));
            foreach (var g in _groups) g.Ids.ExceptWith(ids); // those that came back now travel in the new group
            _groups.RemoveAll(g => g.Ids.Count == 0);
            _groups.Add((ids, now, prompts));
        }
        return batch;
    }

    /// <summary>When a held step becomes startable by itself (its hold limit), or null if none is held.</summary>
    public DateTime? NextDeadline(DateTime now)
    {
        DateTime? next = null;
        foreach (var (step, arrived) in _pending)
            if (Held(step, arrived, now))
            {
                var at = arrived + _settings.HoldLimit;
                foreach (var g in _groups)
                    if (g.Sent + _settings.HoldLimit < at) at = g.Sent + _settings.HoldLimit; // a group expiring frees it sooner
                if (next is null || at < next) next = at;
            }
        return next;
    }

    /// <summary>
    /// At the first hop, within the hold limit: a new request waits for a group to join while enough groups are out
    /// (unless those are all groups of new prompts); a group that came back waits for another while more than
    /// micro-batches groups are out (<see cref="ArrivingPrompts"/>).
    /// </summary>
    private bool Held(StageInput s, DateTime arrived, DateTime now)
    {
        if (s.Hop != 0 || s.Generation is null || now - arrived >= _settings.HoldLimit) return false;
        if (!InGroup(s.RequestId))
            return _groups.Count >= _settings.MicroBatches && !_groups.All(g => g.Prompts);
        return _groups.Count > _settings.MicroBatches && _groups.Any(g => !g.Ids.Contains(s.RequestId) && Out(g.Ids));
    }

    private bool InGroup(string requestId) => _groups.Any(g => g.Ids.Contains(requestId));

    /// <summary>Whether a group is out: one of its requests has no step waiting here.</summary>
    private bool Out(HashSet<string> ids) => ids.Any(id => !_pending.Any(p => p.Step.RequestId == id && p.Step.Hop == 0));
}
