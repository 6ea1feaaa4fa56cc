using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>What planning an asked move comes to (<see cref="CoordinatorState{TCaller}.PlanMove"/>).</summary>
/// <param name="Plan">The move's slices under <see cref="ModelTracker.NextEpoch"/>; null when it is refused or nothing moves (no refusal either).</param>
/// <param name="Refusal">Why it is refused (nothing changed), with the kind of error; null otherwise.</param>
/// <param name="Gain">How much the busiest device is relieved (<see cref="MovePlanner.Gain"/>).</param>
public sealed record MovePlanned(AskedMove Move, LoadPlan? Plan, string? Refusal, MoveFault Fault, double Gain);

public sealed partial class CoordinatorState<TCaller>
{
    /// <summary>Drains and rebalances: the move under way and the drained nodes (<see cref="NodeMoves"/>).</summary>
    public NodeMoves NodeMoves { get; } = new();

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
