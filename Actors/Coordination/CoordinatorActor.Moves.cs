using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// Drains and rebalances, as plumbing: the served model is described off the actor's thread, the move is planned by
/// <see cref="CoordinatorState{TCaller}.PlanMove"/> (refused — nothing changed — or a plan under a new epoch), its slices
/// go out as a recovery's do (workers that keep modules reuse their tensors), requests in flight resume on the new
/// route, and once it serves a drained node is told to leave (Akka's graceful leave: its process exits).
/// </summary>
public sealed partial class CoordinatorActor
{
    private sealed record MoveDescribed(AskedMove Move, ModelDescription Model);
    private sealed record MoveDescribeFailed(AskedMove Move, string Reason);

    private IActorRef? _moveReplyTo; // the client that asked for the move in progress (none for an automatic rebalance)

    private void MoveHandling()
    {
        Receive<DrainNode>(d => AskMove(d.RequestId, d.Node));
        Receive<RebalanceModel>(r => AskMove(r.RequestId, null));
        Receive<MoveDescribed>(d => { if (ReferenceEquals(d.Move, _state.NodeMoves.Asked)) PlanMove(d.Model); });
        Receive<MoveDescribeFailed>(f => { if (ReferenceEquals(f.Move, _state.NodeMoves.Asked)) EndMove(new MoveFailed(f.Move.RequestId ?? "", f.Reason, MoveFault.Cluster)); });
    }

    /// <summary>A drain of <paramref name="node"/> or (null) a rebalance, asked by a client or (null id) by a join.</summary>
    private void AskMove(string? requestId, string? node)
    {
        var decision = _state.AskMove(requestId, node, DateTime.UtcNow);
        switch (decision)
        {
            case MoveDecision.Refused r:
                if (requestId is not null) Sender.Tell(new MoveFailed(requestId, r.Reason, r.Fault));
                break;
            case MoveDecision.LeaveNow now:
                _log.Info("drained {0}: it holds nothing of a served model; told to leave", now.Node);
                TellToLeave(now.Addresses);
                if (requestId is not null) Sender.Tell(new LayersMoved(requestId, Model.Loaded?.PlanEpoch ?? 0, 0, Array.Empty<DeviceMapEntry>(), [now.Node]));
                break;
            case MoveDecision.Plan plan:
                _moveReplyTo = requestId is null ? null : Sender;
                DescribeMove(plan.Move);
                break;
        }
    }

    /// <summary>The asked move's model is read off the actor's thread; its plan follows (<see cref="PlanMove"/>).</summary>
    private void DescribeMove(AskedMove move)
    {
        var request = Model.Loaded!.Request;
        if (request is null)
        {
            EndMove(new MoveFailed(move.RequestId ?? "", $"no load request is known for {Model.Loaded.Folder}; load it again", MoveFault.Cluster));
            return;
        }
        Func<string, bool> local = _settings.HasLocal;
        Task.Run(() => ModelDescription.Read(request, local)).PipeTo(Self,
            success: m => new MoveDescribed(move, m), failure: ex => new MoveDescribeFailed(move, ShardPipeException.Describe(ex)));
    }

    /// <summary>
    /// Drains that a coordinator which moved here learned from the drained nodes' workers, finished once nothing else is
    /// under way: nodes the model no longer uses are told to leave, and one still holding layers has its move planned
    /// again (no caller; the next follows when it serves). <see cref="CoordinatorState{TCaller}.ContinueDrains"/>.
    /// </summary>
    private void ContinueDrains()
    {
        var next = _state.ContinueDrains(DateTime.UtcNow);
        TellToLeave(next.Leave);
        if (next.Move is not { } move) return;
        _log.Info("the {0} did not finish before the coordinator moved: its move is planned again", move.Describe());
        _moveReplyTo = null;
        DescribeMove(move);
    }

    /// <summary>The served model was described: the move is planned, then goes out — or is refused and nothing changes.</summary>
    private void PlanMove(ModelDescription model)
    {
        var planned = _state.PlanMove(model, _settings.Rebalance.MinGain);
        var move = planned.Move;
        if (planned.Plan is not { } plan)
        {
            if (planned.Refusal is { } why)
            {
                if (move.RequestId is null && move.Kind == MoveKind.Rebalance) _log.Info("no rebalance after a join: {0}", why);
                else if (move.RequestId is null) _log.Warning("the {0} (asked again after the coordinator moved) was refused: {1}; the node stays drained", move.Describe(), why);
                else _log.Warning("{0} refused: {1}", move.Describe(), why);
                EndMove(new MoveFailed(move.RequestId ?? "", why, planned.Fault));
            }
            else EndMove(new LayersMoved(move.RequestId ?? "", Model.Loaded!.PlanEpoch, (DateTime.UtcNow - move.Asked).TotalSeconds, Array.Empty<DeviceMapEntry>(), Array.Empty<string>()));
            return;
        }
        var served = Model.Loaded!;
        _state.NodeMoves.Started(move.Node is { } node ? _state.Registry.AddressesOf(node) : []);
        int epoch = Model.BeginMove();
        if (move.Node is { } drained) // its workers keep the fact: a coordinator that takes over mid-move finishes the drain
            foreach (var w in _state.Registry.Workers.Where(w => w.Node == drained)) _refs.Tell(w.Path, new NodeDrained(epoch));
        // Stages that keep their modules stop their old epoch while they take the new slice: requests in flight resume
        // on the new route (prompt plus the tokens so far), with the same tokens.
        foreach (var (id, caller) in _state.Admission.Interrupt()) caller.Tell(new RequestFailed(id, "coordinator", $"{move.Describe()}: layers are moving; resume once it serves", Retryable: true));
        _log.Info("{0} (epoch {1} → {2}, busiest device relieved by {3:P0}): {4}", move.Describe(), served.PlanEpoch, epoch, planned.Gain,
            CoordinatorState<IActorRef>.Moves(plan.Result, "nothing moves"));
        Enter();
        SendSlices((plan, epoch, null));
    }

    /// <summary>The move's epoch serves: old slices are freed, waiting requests start, a drained node is told to leave, the asker answered.</summary>
    private void MoveServed(ModelRecord loaded)
    {
        _refs.Release(loaded.PlanEpoch - 1, where: w => loaded.Stages.All(st => st.WorkerPath != w));
        foreach (var (_, request, caller) in _state.Admission.Drain(Model.State, DateTime.UtcNow)) Start(request, caller);
        var (move, leave) = _state.NodeMoves.Committed();
        if (move is null) return;
        double seconds = (DateTime.UtcNow - move.Asked).TotalSeconds;
        _log.Info("{0} done in {1:0.00} s (epoch {2} serves): moved {3}", move.Describe(), seconds, loaded.PlanEpoch, CoordinatorState<IActorRef>.Moves(loaded, "nothing"));
        TellToLeave(leave);
        AnswerMove(new LayersMoved(move.RequestId ?? "", loaded.PlanEpoch, seconds, loaded.Moved, move.Node is { } n ? [n] : []));
        ContinueDrains(); // another drain a coordinator that moved here learned of
    }

    /// <summary>Graceful leave (asked for, so no recovery): the node's process ends once it is removed.</summary>
    private void TellToLeave(IEnumerable<string> addresses)
    {
        foreach (var a in addresses) Cluster.Get(Context.System).Leave(Address.Parse(a));
    }

    /// <summary>The move ends without serving (refused, nothing to move): the asker learns why.</summary>
    private void EndMove(IShardPipeMessage answer)
    {
        _state.NodeMoves.Abandon();
        AnswerMove(answer);
    }

    /// <summary>A recovery, an unload or a new load overtook the move in progress: its asker is told.</summary>
    private void AbandonMove(string why)
    {
        if (_state.NodeMoves.Abandon() is { } move) AnswerMove(new MoveFailed(move.RequestId ?? "", $"the {move.Describe()} was overtaken: {why}", MoveFault.Cluster));
    }

    private void AnswerMove(IShardPipeMessage answer)
    {
        _moveReplyTo?.Tell(answer);
        _moveReplyTo = null;
    }
}
