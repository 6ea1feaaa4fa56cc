using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>What planning an asked move comes to (<see cref="CoordinatorState{TCaller}.PlanMove"/>).</summary>
/// <param name="Plan">The move's slices under <see cref="ModelTracker.NextEpoch"/>; null when it is refused or nothing moves (no refusal either).</param>
/// <param name="Refusal">Why it is refused (nothing changed), with the kind of error; null otherwise.</param>
/// <param name="Gain">How much the busiest device is relieved (<see cref="MovePlanner.Gain"/>).</param>
public sealed record MovePlanned(AskedMove Move, LoadPlan? Plan, string? Refusal, MoveFault Fault, double Gain);

/// <summary>What a coordinator that moved does about the drains the workers reported (<see cref="CoordinatorState{TCaller}.ResumeDrains"/>).</summary>
/// <param name="AskAgain">Drained nodes whose move is planned afresh (they still hold part of the served model).</param>
/// <param name="Leave">Addresses of drained nodes to tell to leave now.</param>
public sealed record DrainsResumed(IReadOnlyList<string> AskAgain, IReadOnlyList<string> Leave);

public sealed partial class CoordinatorState<TCaller>
{
    /// <summary>Drains and rebalances: the move under way and the drained nodes (<see cref="NodeMoves"/>).</summary>
    public NodeMoves NodeMoves { get; } = new();

    private readonly SortedSet<string> _reportedDrains = new(StringComparer.Ordinal);

    /// <summary>A starting coordinator heard from a worker of <paramref name="node"/> that its node is being drained.</summary>
    public void DrainReported(string node) => _reportedDrains.Add(node);

    /// <summary>
    /// After adoption (<paramref name="recovering"/>: stages are missing and a recovery follows): the drains that the
    /// drained nodes' workers reported, so that a drain whose coordinator died mid-move is finished, not forgotten. A
    /// drained node that still holds part of the served model with nothing missing has its drain asked again
    /// (<see cref="DrainsResumed.AskAgain"/>: its move is planned afresh); every other one is drained from now on
    /// (<see cref="NodeMoves.Restore"/>: the recovery re-plans without it), and unless a recovery follows — whose end
    /// tells them — the drained nodes the model no longer needs are told to leave now (<see cref="DrainsResumed.Leave"/>).
    /// Nodes no longer registered are ignored (they are gone).
    /// </summary>
    public DrainsResumed ResumeDrains(bool recovering)
    {
        var again = new List<string>();
        foreach (var node in _reportedDrains)
        {
            var workers = Registry.Workers.Where(w => w.Node == node).ToList();
            if (workers.Count == 0) continue;
            bool holds = Model.Loaded is { } served && served.DeviceMap.Any(e => e.Device.StartsWith(node + "/", StringComparison.Ordinal));
            if (holds && !recovering && State == ClusterState.Ready && again.Count == 0) again.Add(node); // one move at a time
            else NodeMoves.Restore(node, workers.Select(w => Registry.NodeOf(w.Path)).OfType<string>().Distinct().ToList());
        }
        _reportedDrains.Clear();
        if (recovering) return new DrainsResumed(again, Array.Empty<string>());
        var leave = NodeMoves.PendingLeave();
        NodeMoves.Leaving();
        return new DrainsResumed(again, leave);
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
