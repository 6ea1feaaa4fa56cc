using ShardPipe.Actors.Coordination;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors.Coordination;

/// <summary>
/// Drains and rebalances without an actor: which requests are refused (and that nothing changes then), what a drain
/// moves (only the drained node's modules, onto the others), what a rebalance gives a node that joined, how a drained
/// node is kept out of every plan until it is removed, and that a move which fails half-way is recovered.
/// </summary>
public class NodeMovesTests
{
    private static string Address(int node) => $"akka.tcp://shardpipe@127.0.0.1:{4000 + node}";
    private static string Worker(int node) => $"{Address(node)}/user/device-0";

    private static void Register(CoordinatorState<string> s, int node, long budget) =>
        s.Registry.Register(new RegisterWorker(3, 256000, $"node-{node}", [new WorkerDevice("cpu", budget, Worker(node))], ["*"]), Address(node));

    private static readonly LoadModel Request = Requests.Load(TestPaths.Model("llama_untied"));
    private static readonly Lazy<ModelDescription> Description = new(() => ModelDescription.Read(Request, _ => false));

    /// <summary>A coordinator's state serving the model over nodes 1..budgets.Length (each one cpu worker with that budget).</summary>
    private static CoordinatorState<string> Serving(params long[] budgets)
    {
        var s = new CoordinatorState<string>(3, 256000, 8, 8);
        for (int i = 0; i < budgets.Length; i++) Register(s, i + 1, budgets[i]);
        s.Model.Adopt(_ => true);
        Load(s, s.Plan(Request, Description.Value, s.Model.BeginPlan()).Plan!);
        Assert.Equal(ClusterState.Ready, s.State);
        return s;
    }

    /// <summary>A plan's slices all arrive: the model it describes is served.</summary>
    private static ModelRecord Load(CoordinatorState<string> s, LoadPlan plan)
    {
        s.Model.BeginLoad(plan.Slices.ToDictionary(x => x.Worker.Path, x => x.Slice.PlannedBytes), plan.Result);
        ModelRecord? served = null;
        foreach (var (w, slice) in plan.Slices) served = s.SliceLoaded(w.Path, new SliceLoaded(slice.PlanEpoch, w.Path, slice.PlannedBytes, 1, false));
        return served!;
    }

    private static string NodeOf(string device) => device.Split('/')[0];

    [Fact]
    public void Drain_moves_only_the_drained_nodes_modules_keeps_it_out_of_plans_and_ends_when_it_is_removed()
    {
        var s = Serving(1 << 20, 1 << 20, 1 << 20);
        var before = s.Model.Loaded!;
        Assert.Contains(before.DeviceMap, e => NodeOf(e.Device) == "node-3");

        var ask = Assert.IsType<MoveDecision.Plan>(s.AskMove("r1", "node-3", DateTime.UtcNow));
        Assert.Equal((MoveKind.Drain, "node-3", before.PlanEpoch), (ask.Move.Kind, ask.Move.Node, ask.Move.FromEpoch));
        var busy = Assert.IsType<MoveDecision.Refused>(s.AskMove("r2", "node-2", DateTime.UtcNow)); // one move at a time
        Assert.Contains("drain of node-3 is in progress", busy.Reason);

        var planned = s.PlanMove(Description.Value, minGain: 0.5); // the minimum gain is for automatic rebalances only
        var plan = Assert.IsType<LoadPlan>(planned.Plan);
        Assert.Null(planned.Refusal);
        Assert.Equal(before.PlanEpoch + 1, plan.Result.PlanEpoch);
        Assert.DoesNotContain(plan.Slices, x => x.Worker.Node == "node-3");
        Assert.DoesNotContain(plan.Result.DeviceMap, e => NodeOf(e.Device) == "node-3");
        // What node-1 and node-2 held stays where it was; what moved came from node-3 and nothing else.
        foreach (var e in before.DeviceMap.Where(e => NodeOf(e.Device) != "node-3"))
            Assert.Contains(plan.Result.DeviceMap, n => n.Module == e.Module && n.Device == e.Device);
        Assert.Equal(before.DeviceMap.Where(e => NodeOf(e.Device) == "node-3").Select(e => e.Module).Order(), plan.Result.Moved.Select(m => m.Module).Order());
        Assert.Equal(before.Recoveries, plan.Result.Recoveries); // a drain is not a recovery

        s.NodeMoves.Started([Address(3)]);
        Assert.Equal(plan.Result.PlanEpoch, s.Model.BeginMove());
        Assert.Equal(ClusterState.Moving, s.Status("q").State);
        Assert.Equal([new NodeDrain("node-3", "moving")], s.Status("q").Drains!);
        Assert.True(s.Model.IsCurrent(plan.Result.PlanEpoch));
        var served = Load(s, plan);
        Assert.Equal(ClusterState.Ready, s.State);
        var (move, leave) = s.NodeMoves.Committed();
        Assert.Equal("r1", move!.RequestId);
        Assert.Equal([Address(3)], leave);
        Assert.Equal([new NodeDrain("node-3", "leaving")], s.Status("q").Drains!);

        // Its workers stop (the node left): nothing served needed them, so nothing is recovered.
        Assert.Equal(Loss.Nothing, s.Lose(s.Registry.WorkersOn(Address(3))));
        // While it is leaving, a plan never puts anything on it, even with its worker registered again.
        Register(s, 3, 1 << 20);
        Assert.DoesNotContain(s.NodeMoves.Plannable(s.Registry.Workers), w => w.Node == "node-3");
        Assert.IsType<MoveDecision.Refused>(s.AskMove("r3", "node-3", DateTime.UtcNow));
        s.NodeMoves.NodeRemoved(Address(3)); // removed: a node started again under its name is used again
        Assert.Null(s.Status("q").Drains);
        Assert.Contains(s.NodeMoves.Plannable(s.Registry.Workers), w => w.Node == "node-3");
        Assert.Equal(served.PlanEpoch, s.Status("q").PlanEpoch);
    }

    [Fact]
    public void A_drain_is_refused_and_nothing_changes_for_an_unknown_node_a_busy_cluster_the_last_node_or_too_little_memory()
    {
        var s = Serving(1 << 20, 1 << 20, 1 << 20);
        var unknown = Assert.IsType<MoveDecision.Refused>(s.AskMove("r", "node-9", DateTime.UtcNow));
        Assert.Equal(MoveFault.InvalidInput, unknown.Fault);
        Assert.Contains("node-9", unknown.Reason);
        Assert.Contains("node-1, node-2, node-3", unknown.Reason);

        // Each node's budget just above what it holds: the others have no room for what the drained node holds.
        var usage = s.Model.Loaded!.Devices.ToDictionary(d => NodeOf(d.Device), d => d.PlannedBytes);
        var tight = Serving(usage["node-1"] + 1000, usage["node-2"] + 1000, usage["node-3"] + 1000);
        var epoch = tight.Model.Loaded!.PlanEpoch;
        Assert.IsType<MoveDecision.Plan>(tight.AskMove("r", "node-2", DateTime.UtcNow));
        var refused = tight.PlanMove(Description.Value, 0);
        Assert.Null(refused.Plan);
        Assert.Equal(MoveFault.Placement, refused.Fault);
        Assert.Contains("draining node-2 would leave too little memory", refused.Refusal);
        Assert.Contains("missing", refused.Refusal);
        Assert.Equal((ClusterState.Ready, epoch, epoch), (tight.State, tight.Model.Epoch, tight.Model.Loaded!.PlanEpoch));
        Assert.Null(tight.NodeMoves.Asked);
        Assert.Null(tight.Status("q").Drains);
        Assert.Equal(3, tight.NodeMoves.Plannable(tight.Registry.Workers).Count);

        // While the model recovers there is nothing to drain from; the last node with devices is never drained.
        tight.Model.BeginRecovery(DateTime.UtcNow);
        Assert.Contains("recovering", Assert.IsType<MoveDecision.Refused>(tight.AskMove("r", "node-1", DateTime.UtcNow)).Reason);
        var alone = new CoordinatorState<string>(3, 256000, 8, 8);
        Register(alone, 1, 1 << 20);
        alone.Model.Adopt(_ => true);
        Assert.Contains("last node", Assert.IsType<MoveDecision.Refused>(alone.AskMove("r", "node-1", DateTime.UtcNow)).Reason);
    }

    [Fact]
    public void A_node_that_holds_nothing_of_the_model_leaves_at_once()
    {
        var s = Serving(1 << 20, 1 << 20);
        Register(s, 3, 1 << 20); // joined after the load: holds nothing
        var now = Assert.IsType<MoveDecision.LeaveNow>(s.AskMove("r", "node-3", DateTime.UtcNow));
        Assert.Equal("node-3", now.Node);
        Assert.Equal([Address(3)], now.Addresses);
        Assert.Equal([new NodeDrain("node-3", "leaving")], s.Status("q").Drains!);
        Assert.Equal(ClusterState.Ready, s.State);
        Assert.Null(s.NodeMoves.Asked);
    }

    [Fact]
    public void Rebalance_gives_a_joined_node_its_share_moves_nothing_when_balanced_and_an_automatic_one_needs_the_minimum_gain()
    {
        var s = Serving(1 << 20, 1 << 20);
        var before = s.Model.Loaded!;
        Assert.IsType<MoveDecision.Plan>(s.AskMove("r", null, DateTime.UtcNow));
        var nothing = s.PlanMove(Description.Value, 0); // the same two nodes: the placement is the one served
        Assert.Null(nothing.Plan);
        Assert.Null(nothing.Refusal);
        Assert.Null(s.NodeMoves.Asked);

        Register(s, 3, 1 << 20);
        Assert.IsType<MoveDecision.Plan>(s.AskMove(null, null, DateTime.UtcNow)); // automatic (a join)
        var tooLittle = s.PlanMove(Description.Value, minGain: 0.99);
        Assert.Null(tooLittle.Plan);
        Assert.Contains("rebalance-min-gain", tooLittle.Refusal);
        Assert.Equal((ClusterState.Ready, before.PlanEpoch), (s.State, s.Model.Epoch));

        Assert.IsType<MoveDecision.Plan>(s.AskMove(null, null, DateTime.UtcNow));
        // (Two decoder layers: the busiest device keeps the embedding and layer 0 whatever the nodes, so the gain is about 0.)
        var planned = s.PlanMove(Description.Value, minGain: 0);
        var plan = Assert.IsType<LoadPlan>(planned.Plan);
        Assert.InRange(planned.Gain, -0.01, 0.01);
        Assert.Contains(plan.Slices, x => x.Worker.Node == "node-3");
        Assert.NotEmpty(plan.Result.Moved);
        Assert.All(plan.Result.Moved, m => Assert.NotEqual(m.Device, ShardPipe.Placement.ModulePath.Closest(before.DeviceMap.Select(e => new KeyValuePair<string, string>(e.Module, e.Device)), m.Module)));
        s.NodeMoves.Started([]);
        s.Model.BeginMove();
        Load(s, plan);
        Assert.Equal((null, 0), (s.NodeMoves.Committed().Move?.Node, s.NodeMoves.Status().Length));
        Assert.Equal(3, s.Model.Loaded!.Stages.Select(st => st.WorkerPath).Distinct().Count());
    }

    [Fact]
    public void A_move_whose_load_fails_half_way_is_recovered_and_its_drained_node_stays_out()
    {
        var s = Serving(1 << 20, 1 << 20, 1 << 20);
        s.AskMove("r", "node-3", DateTime.UtcNow);
        var plan = s.PlanMove(Description.Value, 0).Plan!;
        s.NodeMoves.Started([Address(3)]);
        int epoch = s.Model.BeginMove();
        s.Model.BeginLoad(plan.Slices.ToDictionary(x => x.Worker.Path, x => x.Slice.PlannedBytes), plan.Result);
        // A survivor is lost mid-move: the move's load fails and the model is recovered (its old stages stopped).
        Assert.Equal(Loss.FailsLoad, s.Lose(s.Registry.WorkersOn(Address(2))));
        Assert.Equal(LoadFailure.Recover, s.Model.FailLoad(epoch, "node-2 was lost"));
        Assert.Equal("r", s.NodeMoves.Abandon()!.RequestId);
        Assert.Equal([Address(3)], s.NodeMoves.PendingLeave()); // told to leave once the recovery serves
        Assert.Equal([Worker(1)], s.NodeMoves.Plannable(s.Registry.Workers).Select(w => w.Path));
        int recovery = s.Model.BeginRecovery(DateTime.UtcNow);
        Assert.Equal(ClusterState.Recovering, s.State);
        var replan = s.Plan(Request, Description.Value, recovery);
        Assert.Null(replan.Error);
        Assert.All(replan.Plan!.Slices, x => Assert.Equal("node-1", x.Worker.Node)); // neither the lost node nor the drained one
    }

    [Fact]
    public void The_gain_of_a_move_is_the_relief_of_the_busiest_memory_device()
    {
        static ModelRecord With(params (string Device, long Bytes)[] d) =>
            ModelTrackerTests.Model(1) with { Devices = d.Select(x => new DeviceUsage(x.Device, x.Bytes, 0, 1000)).ToArray() };
        Assert.Equal(1 - 2.0 / 3, MovePlanner.Gain(With(("node-1/cpu", 300), ("node-2/cpu", 300)), With(("node-1/cpu", 200), ("node-2/cpu", 200), ("node-3/cpu", 200))), 6);
        Assert.Equal(0, MovePlanner.Gain(With(("node-1/cpu", 300), ("node-1/disk", 900)), With(("node-1/cpu", 300), ("node-2/disk", 10))), 6); // disk devices do not count
        Assert.True(MovePlanner.Gain(With(("node-1/cpu", 100)), With(("node-1/cpu", 150))) < 0); // a move can make it worse
    }

    [Fact]
    public void Rebalance_refuses_a_model_loaded_with_an_explicit_map_and_a_cluster_without_a_served_model()
    {
        var empty = new CoordinatorState<string>(3, 256000, 8, 8);
        Register(empty, 1, 1 << 20);
        empty.Model.Adopt(_ => true);
        Assert.Contains("nothing to rebalance", Assert.IsType<MoveDecision.Refused>(empty.AskMove("r", null, DateTime.UtcNow)).Reason);

        var s = new CoordinatorState<string>(3, 256000, 8, 8);
        Register(s, 1, 1 << 20);
        Register(s, 2, 1 << 20);
        s.Model.Adopt(_ => true);
        var explicitMap = Request with { DeviceMap = "node-1/cpu" };
        Load(s, s.Plan(explicitMap, Description.Value, s.Model.BeginPlan()).Plan!);
        Assert.IsType<MoveDecision.Plan>(s.AskMove("r", null, DateTime.UtcNow));
        var refused = s.PlanMove(Description.Value, 0);
        Assert.Equal(MoveFault.InvalidInput, refused.Fault);
        Assert.Contains("explicit device_map", refused.Refusal);
    }
    [Fact]
    public void A_drain_that_its_nodes_workers_report_to_a_new_coordinator_is_finished_not_forgotten()
    {
        // Through registration: node-1's worker says its node is being drained; the new coordinator adopts nothing (no
        // slice held), so node-1 is drained again, kept out of plans and told to leave.
        var fresh = new CoordinatorState<string>(3, 256000, 8, 8);
        string[] nodes = [Address(1), Address(2)];
        fresh.Register(new RegisterWorker(3, 256000, "node-1", [new WorkerDevice("cpu", 1 << 20, Worker(1))], ["*"], Drained: true), Address(1), () => nodes);
        fresh.Register(new RegisterWorker(3, 256000, "node-2", [new WorkerDevice("cpu", 1 << 20, Worker(2))], ["*"]), Address(2), () => nodes);
        fresh.Model.Adopt(_ => true);
        Assert.Equal(["node-1"], fresh.ResumeDrains());
        Assert.Equal(["node-2"], fresh.NodeMoves.Plannable(fresh.Registry.Workers).Select(w => w.Node));
        var next = fresh.ContinueDrains(DateTime.UtcNow);
        Assert.Null(next.Move);
        Assert.Equal([Address(1)], next.Leave);
        Assert.Equal([new NodeDrain("node-1", "leaving")], fresh.Status("q").Drains!);

        // A served model that the drained node still holds part of: drained at once (a recovery would plan without
        // it), then its move is asked again and, once it serves, the node is told to leave.
        var s = Serving(1 << 20, 1 << 20, 1 << 20);
        var before = s.Model.Loaded!;
        Assert.Contains(before.DeviceMap, e => NodeOf(e.Device) == "node-3");
        s.DrainReported("node-3");
        s.DrainReported("node-9"); // not registered (gone): ignored
        Assert.Equal(["node-3"], s.ResumeDrains());
        Assert.Empty(s.ResumeDrains()); // each report is used once
        Assert.True(s.NodeMoves.IsDrained("node-3"));
        Assert.DoesNotContain(s.NodeMoves.Plannable(s.Registry.Workers), w => w.Node == "node-3");
        next = s.ContinueDrains(DateTime.UtcNow);
        Assert.Empty(next.Leave); // it still holds layers
        var move = Assert.IsType<AskedMove>(next.Move);
        Assert.Equal((MoveKind.Drain, "node-3", (string?)null, before.PlanEpoch), (move.Kind, move.Node, move.RequestId, move.FromEpoch));
        Assert.Null(s.ContinueDrains(DateTime.UtcNow).Move); // one move at a time
        var plan = Assert.IsType<LoadPlan>(s.PlanMove(Description.Value, minGain: 0.5).Plan);
        Assert.DoesNotContain(plan.Result.DeviceMap, e => NodeOf(e.Device) == "node-3");
        s.NodeMoves.Started([Address(3)]);
        s.Model.BeginMove();
        Load(s, plan);
        var (done, leave) = s.NodeMoves.Committed();
        Assert.Equal(move, done);
        Assert.Equal([Address(3)], leave);
        Assert.Empty(s.ContinueDrains(DateTime.UtcNow).Leave); // told once

        // A drain this coordinator did not know (the node registered after the start window) is learned from any
        // later registration, and finished the same way.
        var late = Serving(1 << 20, 1 << 20, 1 << 20);
        var reg = late.Register(new RegisterWorker(3, 256000, "node-2", [new WorkerDevice("cpu", 1 << 20, Worker(2))], ["*"], Drained: true), Address(2), () => [Address(1), Address(2), Address(3)]);
        Assert.True(reg.DrainLearned);
        Assert.True(late.NodeMoves.IsDrained("node-2"));
        Assert.False(late.Register(new RegisterWorker(3, 256000, "node-2", [new WorkerDevice("cpu", 1 << 20, Worker(2))], ["*"], Drained: true), Address(2), () => [Address(1), Address(2), Address(3)]).DrainLearned);
        Assert.Equal("node-2", late.ContinueDrains(DateTime.UtcNow).Move?.Node);
    }
}
