using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>What planning an asked move comes to (<see cref="CoordinatorState{TCaller}.PlanMove"/>).</summary>
/// <param name="Plan">The move's slices under <see cref="ModelTracker.NextEpoch"/>; null when it is refused or nothing moves (no refusal either).</param>
/// <param name="Refusal">Why it is refused (nothing changed), with the kind of error; null otherwise.</param>
/// <param name="Gain">How much the busiest device is relieved (<see cref="MovePlanner.Gain"/>).</param>
public sealed record MovePlanned(AskedMove Move, LoadPlan? Plan, string? Refusal, MoveFault Fault, double Gain);

/// <summary>What finishing the drains comes to (<see cref="CoordinatorState{TCaller}.ContinueDrains"/>).</summary>
/// <param name="Move">A drained node's move asked again (it still holds part of the served model): describe and plan it; null: none.</param>
/// <param name="Leave">Addresses of drained nodes to tell to leave now.</param>
public sealed record DrainsResumed(AskedMove? Move, IReadOnlyList<string> Leave);

public sealed partial class CoordinatorState<TCaller>
{
    /// <summary>Drains and rebalances: the move under way and the drained nodes (<see cref="NodeMoves"/>).</summary>
    public NodeMoves NodeMoves { get; } = new();

    private readonly SortedSet<string> _reportedDrains = new(StringComparer.Ordinal);

    /// <summary>A starting coordinator heard from a worker of <paramref name="node"/> that its node is being drained.</summary>
    public void DrainReported(string node) => _reportedDrains.Add(node);

    /// <summary>
    /// After adoption: every drain that a registered node's workers reported is drained again here
    /// (<see cref="NodeMoves.Restore"/>), so that no plan — the adoption's recovery included — puts anything on it, as
    /// the coordinator that died kept it. Nodes no longer registered are ignored (they are gone). Returns the nodes
    /// restored; <see cref="ContinueDrains"/> then finishes them.
    /// </summary>
    public IReadOnlyList<string> ResumeDrains()
    {
        var restored = new List<string>();
        foreach (var node in _reportedDrains)
            if (RestoreDrain(node)) restored.Add(node);
        _reportedDrains.Clear();
        return restored;
    }

    /// <summary>A registered node's workers say it is being drained: drained here too (false when none of its workers is registered).</summary>
    private bool RestoreDrain(string node)
    {
        var addresses = Registry.AddressesOf(node);
        if (addresses.Count == 0) return false;
        NodeMoves.Restore(node, addresses);
        return true;
    }

    /// <summary>
    /// Drains still to finish, while no move, load or recovery is under way (a coordinator that moved here learned them
    /// from the drained nodes' workers): each drained node the served model no longer uses is told to leave
    /// (<see cref="DrainsResumed.Leave"/>, now <c>leaving</c>), and the first one that still holds part of it has its move
    /// asked again (<see cref="DrainsResumed.Move"/>, no caller; the others follow one at a time, as each move serves).
    /// </summary>
    public DrainsResumed ContinueDrains(DateTime now)
    {
        if (NodeMoves.Asked is not null || State is not (ClusterState.Ready or ClusterState.Empty or ClusterState.Failed))
            return new DrainsResumed(null, Array.Empty<string>());
        var served = State == ClusterState.Ready ? Model.Loaded : null;
        bool Holds(string node) => served is not null && served.DeviceMap.Any(e => e.Device.StartsWith(node + "/", StringComparison.Ordinal));
        var waiting = NodeMoves.Waiting();
        var leave = new List<string>();
        foreach (var node in waiting.Where(n => !Holds(n))) leave.AddRange(NodeMoves.Leave(node));
        var move = waiting.FirstOrDefault(Holds) is { } holder ? NodeMoves.Resume(holder, served!.PlanEpoch, now) : null;
        return new DrainsResumed(move, leave);
    }

    /// <summary>A client (or, with a null id, a node's join) asks to drain <paramref name="node"/> or, with null, to rebalance.</summary>
    public MoveDecision AskMove(string? requestId, string? node, DateTime now) =>
        NodeMoves.Ask(requestId, node is null ? MoveKind.Rebalance : MoveKind.Drain, node, Model, Registry, now);

    /// <summary>
    /// The asked move's plan, once the served model was described: refused — and nothing changes — when the model is no
    /// longer the one it was asked for, when the others lack the memory (a drain), or when it would move nothing or gain
    /// less than <paramref name="minGain"/> (a rebalance). The move stays asked while its plan is returned; every
    /// other outcome ends it.
    /// </summary>
    public MovePlanned PlanMove(ModelDescription model, double minGain)
    {
        var move = NodeMoves.Asked ?? throw new InvalidOperationException("no move was asked");
        MovePlanned Refuse(string why, MoveFault fault, double gain = 0)
        {
            NodeMoves.Abandon();
            return new MovePlanned(move, null, why, fault, gain);
        }
        if (State != ClusterState.Ready || Model.Loaded is not { } served || served.PlanEpoch != move.FromEpoch)
            return Refuse($"the {move.Describe()} was overtaken: the cluster is {State.ToString().ToLowerInvariant()} at epoch {Model.Loaded?.PlanEpoch ?? 0}; ask again", MoveFault.Cluster);
        var workers = NodeMoves.Plannable(Registry.Workers);
        try
        {
            if (move.Kind == MoveKind.Drain)
            {
                var plan = MovePlanner.Drain(model, served, workers.Where(w => w.Node != move.Node).ToList(), Model.Holders, move.Node!, Model.NextEpoch, _kvCap);
                return new MovePlanned(move, plan, null, MoveFault.Cluster, MovePlanner.Gain(served, plan.Result));
            }
            var rebalance = MovePlanner.Rebalance(model, served, workers, Model.NextEpoch, _kvCap, PlanningSpeeds);
            if (rebalance is null)
            {
                NodeMoves.Abandon();
                return new MovePlanned(move, null, null, MoveFault.Cluster, 0); // the placement is the one served: nothing moves
            }
            double gain = MovePlanner.Gain(served, rebalance.Result);
            if (move.RequestId is null && gain < minGain)
                return Refuse($"a rebalance would relieve the busiest device by {gain:P0}, under shardpipe.placement.rebalance-min-gain ({minGain:P0})", MoveFault.Cluster, gain);
            return new MovePlanned(move, rebalance, null, MoveFault.Cluster, gain);
        }
        catch (PlacementException ex) { return Refuse(ex.Message, MoveFault.Placement); }
        catch (InvalidInputException ex) { return Refuse(ex.Message, MoveFault.InvalidInput); }
        catch (ShardPipeException ex) { return Refuse(ex.Message, MoveFault.Cluster); }
    }
}
