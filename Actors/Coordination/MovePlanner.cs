using ShardPipe.Messages;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// Plans a live move of the served model (pure): a drain re-plans without one node as a recovery would — every module
/// of the other devices stays where it is, the drained node's go to their neighbours (<see cref="SlicePlanner.Replan"/>),
/// so only they are read — and a rebalance re-plans the model's strategy over every plannable worker
/// (<see cref="SlicePlanner.Plan"/>, the planner's budget-proportional placement); workers that keep a module hand
/// its tensors to the new epoch. Either way the result is the served model under a new epoch, with what moved.
/// </summary>
public static class MovePlanner
{
    /// <summary>
    /// The plan without <paramref name="node"/>: its modules move to <paramref name="remaining"/> (every plannable worker
    /// of the other nodes). Too little memory on the others is a <see cref="PlacementException"/> saying what is missing.
    /// </summary>
    public static LoadPlan Drain(ModelDescription model, ModelRecord served, IReadOnlyList<WorkerInfo> remaining, IReadOnlySet<string> holders,
        string node, int epoch, long kvCap = 0)
    {
        if (remaining.Any(w => w.Node == node)) throw new InvalidOperationException($"{node} cannot both be drained and hold the model");
        LoadPlan plan;
        try { plan = SlicePlanner.Replan(model, served, remaining, holders, epoch, kvCap).Plan; }
        catch (PlacementException ex) { throw new PlacementException($"draining {node} would leave too little memory: {ex.Message}"); }
        return plan with { Result = plan.Result with { Recoveries = served.Recoveries } }; // a drain is not a recovery
    }

    /// <summary>
    /// The served model's strategy planned again over <paramref name="workers"/>; null when the placement it gives is the
    /// one served (nothing would move). The model must have been loaded with a strategy (balanced, auto, sequential).
    /// </summary>
    public static LoadPlan? Rebalance(ModelDescription model, ModelRecord served, IReadOnlyList<WorkerInfo> workers, int epoch, long kvCap = 0,
        IReadOnlyDictionary<DeviceId, double>? speeds = null)
    {
        var request = served.Request ?? throw new ClusterException($"no load request is known for {served.Folder}; load it again");
        if (DeviceMapSpec.Parse(request.DeviceMap).Strategy is null)
            throw new InvalidInputException($"{served.Folder} was loaded with an explicit device_map: rebalance re-plans only a strategy (balanced, auto, sequential); load it again with one");
        var ids = workers.Select(w => w.Id).ToList();
        var plan = SlicePlanner.Plan(model, request with { MaxMemory = SlicePlanner.KeepMaxMemory(request.MaxMemory, ids) }, workers, epoch, kvCap, speeds);
        var moved = Moved(served.DeviceMap, plan.Result.DeviceMap);
        if (moved.Length == 0 && SameStages(served, plan.Result)) return null;
        return plan with { Result = plan.Result with { Request = request, Recoveries = served.Recoveries, Moved = moved } };
    }

    /// <summary>Entries of <paramref name="to"/> whose module was held by another device under <paramref name="from"/> (its closest entry).</summary>
    public static DeviceMapEntry[] Moved(IReadOnlyList<DeviceMapEntry> from, IReadOnlyList<DeviceMapEntry> to)
    {
        var old = from.Select(e => new KeyValuePair<string, string>(e.Module, e.Device)).ToList();
        return to.Where(e => ModulePath.Closest(old, e.Module) != e.Device).ToArray();
    }

    /// <summary>
    /// How much a move relieves the busiest device: 1 − (the most weight bytes a memory device holds after ÷ before). Decode
    /// reads every weight once per token, so that device sets the pipeline's pace on equal machines.
    /// </summary>
    public static double Gain(ModelRecord before, ModelRecord after)
    {
        static long Busiest(ModelRecord m) => m.Devices.Where(d => !d.Device.EndsWith("/disk", StringComparison.Ordinal)).Select(d => d.PlannedBytes).DefaultIfEmpty(0).Max();
        long b = Busiest(before), a = Busiest(after);
        return b <= 0 ? 0 : 1 - (double)a / b;
    }

    private static bool SameStages(ModelRecord a, ModelRecord b) =>
        a.Stages.Select(s => s.WorkerPath).SequenceEqual(b.Stages.Select(s => s.WorkerPath));
}
