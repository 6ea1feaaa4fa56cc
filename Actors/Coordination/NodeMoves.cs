using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>What moves layers live: a drain (one node's layers go to the others, then it leaves) or a rebalance.</summary>
public enum MoveKind { Drain, Rebalance }

/// <summary>
/// A drain or rebalance asked for: by a client (<see cref="RequestId"/>) or by a node joining (auto rebalance: null),
/// of the served model at <see cref="FromEpoch"/>.
/// </summary>
public sealed record AskedMove(string? RequestId, MoveKind Kind, string? Node, int FromEpoch, DateTime Asked)
{
    public string Describe() => Kind == MoveKind.Drain ? $"drain of {Node}" : "rebalance";
}

/// <summary>What a drain or rebalance request comes to before anything changes.</summary>
public abstract record MoveDecision
{
    /// <summary>Refused as asked; nothing changes.</summary>
    public sealed record Refused(string Reason, MoveFault Fault) : MoveDecision;
    /// <summary>Describe the served model (off the actor's thread), then plan the move (<see cref="CoordinatorState{TCaller}.PlanMove"/>).</summary>
    public sealed record Plan(AskedMove Move) : MoveDecision;
    /// <summary>The node holds nothing of a model (or none is served): it is told to leave at once, at these addresses.</summary>
    public sealed record LeaveNow(string Node, IReadOnlyList<string> Addresses) : MoveDecision;
}

/// <summary>
/// Drains and rebalances, without the actor: the one move in progress (planned, then moving under a new epoch) and
/// the nodes drained — excluded from every plan from the moment their move goes out until they are removed from the
/// cluster (so that a drained node that stops starts no recovery, and a later re-plan never puts layers back on it).
/// Which requests are refused, and why, is decided here; the plan itself is <see cref="MovePlanner"/>'s. Pure.
/// </summary>
public sealed class NodeMoves
{
    private sealed record Drained(string Node, IReadOnlyList<string> Addresses, string Phase);

    private readonly Dictionary<string, Drained> _drained = new(StringComparer.Ordinal); // node name → its addresses and phase

    /// <summary>The move being planned or under way, else null.</summary>
    public AskedMove? Asked { get; private set; }

    /// <summary>Whether <paramref name="node"/> is drained (moving away or leaving): no plan puts anything on it.</summary>
    public bool IsDrained(string node) => _drained.ContainsKey(node);

    /// <summary>The registered workers a plan may use: every one not on a drained node.</summary>
    public IReadOnlyList<WorkerInfo> Plannable(IEnumerable<WorkerInfo> workers) => workers.Where(w => !IsDrained(w.Node)).ToList();

    /// <summary>
    /// A client asks to drain <paramref name="node"/> (or, with null, to rebalance; <paramref name="requestId"/> null: an
    /// automatic rebalance after a join). Refused unless the model is ready (or, for a drain, none is served) and no other
    /// move is under way; a drain needs a known node that is not already drained and another node to take its place.
    /// </summary>
    public MoveDecision Ask(string? requestId, MoveKind kind, string? node, ModelTracker model, WorkerRegistry registry, DateTime now)
    {
        if (Asked is { } busy) return new MoveDecision.Refused($"a {busy.Describe()} is in progress; retry when it is done", MoveFault.Cluster);
        var plannable = Plannable(registry.Workers);
        string state = model.State.ToString().ToLowerInvariant();
        if (kind == MoveKind.Rebalance)
        {
            if (model.State != ClusterState.Ready || model.Loaded is null)
                return new MoveDecision.Refused($"nothing to rebalance: the cluster is {state}{(model.Failure is { } f ? $" ({f})" : "")}; rebalance a served model", MoveFault.Cluster);
            return new MoveDecision.Plan(Asked = new AskedMove(requestId, kind, null, model.Loaded.PlanEpoch, now));
        }
        if (string.IsNullOrWhiteSpace(node)) return new MoveDecision.Refused("drain needs a node name (as status lists them)", MoveFault.InvalidInput);
        var known = registry.Workers.Select(w => w.Node).Distinct().ToList();
        if (!known.Contains(node))
            return new MoveDecision.Refused($"no node named '{node}' is registered (nodes: {string.Join(", ", known.Order(Placement.NaturalOrder.Instance))})", MoveFault.InvalidInput);
        if (_drained.TryGetValue(node, out var drained)) return new MoveDecision.Refused($"{node} is already drained ({drained.Phase})", MoveFault.Cluster);
        if (!plannable.Any(w => w.Node != node))
            return new MoveDecision.Refused($"{node} is the last node with devices: draining it would leave nothing to serve", MoveFault.Placement);
        var addresses = registry.AddressesOf(node);
        bool holdsModel = model.Loaded is { } served && served.DeviceMap.Any(e => e.Device.StartsWith(node + "/", StringComparison.Ordinal));
        if (model.State is ClusterState.Empty or ClusterState.Failed || (model.State == ClusterState.Ready && !holdsModel))
        {
            _drained[node] = new Drained(node, addresses, "leaving");
            return new MoveDecision.LeaveNow(node, addresses);
        }
        if (model.State != ClusterState.Ready)
            return new MoveDecision.Refused($"the cluster is {state}{(model.Failure is { } f ? $" ({f})" : "")}; drain {node} once the model is ready", MoveFault.Cluster);
        return new MoveDecision.Plan(Asked = new AskedMove(requestId, kind, node, model.Loaded!.PlanEpoch, now));
    }

    /// <summary>
    /// The asked move's plan was made and goes out (a drain's node is drained from now on: no plan, a recovery's included,
    /// puts anything on it). Returns the move.
    /// </summary>
    public AskedMove Started(IReadOnlyList<string> drainedAddresses)
    {
        var move = Asked ?? throw new InvalidOperationException("no move was asked");
        if (move is { Kind: MoveKind.Drain, Node: { } node }) _drained[node] = new Drained(node, drainedAddresses, "moving");
        return move;
    }

    /// <summary>
    /// The move's new epoch serves: the move ends; returns it and the addresses of the drained node to tell to leave
    /// (now <c>leaving</c> until it is removed).
    /// </summary>
    public (AskedMove? Move, IReadOnlyList<string> Leave) Committed()
    {
        var move = Asked;
        Asked = null;
        if (move is not { Kind: MoveKind.Drain, Node: { } node } || !_drained.TryGetValue(node, out var d)) return (move, Array.Empty<string>());
        _drained[node] = d with { Phase = "leaving" };
        return (move, d.Addresses);
    }

    /// <summary>
    /// The asked move ends without its epoch serving (refused when planned, nothing to move, superseded by a recovery,
    /// an unload or a new load): returns it. A drain whose move already went out keeps its node drained — the recovery
    /// that follows re-plans without it — and the node is told to leave once a model is served again; one refused when
    /// planned never drained anything.
    /// </summary>
    public AskedMove? Abandon()
    {
        var move = Asked;
        Asked = null;
        return move;
    }

    /// <summary>
    /// A drain that a coordinator which moved here learned from the drained node's own workers
    /// (<see cref="ShardPipe.Messages.RegisterWorker.Drained"/>): the node is drained (<c>moving</c>) from now on, so no plan —
    /// the adoption's recovery included — puts anything on it, and it is told to leave once the model no longer needs it.
    /// </summary>
    public void Restore(string node, IReadOnlyList<string> addresses)
    {
        if (!_drained.ContainsKey(node)) _drained[node] = new Drained(node, addresses, "moving");
    }

    /// <summary>
    /// The move of a drained node (<see cref="Restore"/>d) that still holds part of the served model at
    /// <paramref name="fromEpoch"/>, asked again without a caller: it stays drained whatever becomes of the move (as a
    /// drain whose move went out does).
    /// </summary>
    public AskedMove Resume(string node, int fromEpoch, DateTime now)
    {
        if (Asked is { } busy) throw new InvalidOperationException($"a {busy.Describe()} is in progress");
        if (!_drained.ContainsKey(node)) throw new InvalidOperationException($"{node} is not drained");
        return Asked = new AskedMove(null, MoveKind.Drain, node, fromEpoch, now);
    }

    /// <summary>A drained node the model no longer needs is told to leave: now <c>leaving</c>; returns its addresses.</summary>
    public IReadOnlyList<string> Leave(string node)
    {
        if (!_drained.TryGetValue(node, out var d)) return Array.Empty<string>();
        _drained[node] = d with { Phase = "leaving" };
        return d.Addresses;
    }

    /// <summary>A drained node's addresses (to tell it to leave once the model no longer needs it), else empty.</summary>
    public IReadOnlyList<string> AddressesOf(string node) => _drained.TryGetValue(node, out var d) ? d.Addresses : Array.Empty<string>();

    /// <summary>Drained nodes still to be told to leave: those whose move was superseded (a recovery finished without them).</summary>
    public IReadOnlyList<string> PendingLeave() => Waiting().SelectMany(AddressesOf).ToList();

    /// <summary>Drained nodes still <c>moving</c> whose move is not the one asked (superseded, or learned by a coordinator that moved here).</summary>
    public IReadOnlyList<string> Waiting() =>
        _drained.Values.Where(d => d.Phase == "moving" && Asked?.Node != d.Node).Select(d => d.Node).ToList();

    /// <summary>Marks every drained node that was still moving as leaving (they were just told to).</summary>
    public void Leaving()
    {
        foreach (var node in Waiting()) Leave(node);
    }

    /// <summary>A node was removed from the cluster: a drain of it is over (a node started again under its name is used again).</summary>
    public void NodeRemoved(string address)
    {
        foreach (var d in _drained.Values.Where(d => d.Addresses.Contains(address)).ToList()) _drained.Remove(d.Node);
    }

    /// <summary>The drained nodes, as status shows them.</summary>
    public NodeDrain[] Status() => _drained.Values.OrderBy(d => d.Node, Placement.NaturalOrder.Instance).Select(d => new NodeDrain(d.Node, d.Phase)).ToArray();
}
