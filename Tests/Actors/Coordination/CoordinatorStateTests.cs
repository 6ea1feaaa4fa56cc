using ShardPipe.Actors.Coordination;
using ShardPipe.Messages;

namespace ShardPipe.Tests.Actors.Coordination;

/// <summary>Where the coordinator's parts meet: a loss removes workers and asks the model what it means; status.</summary>
public class CoordinatorStateTests
{
    private const string Node1 = "akka.tcp://shardpipe@127.0.0.1:4001", Node2 = "akka.tcp://shardpipe@127.0.0.1:4002";

    [Fact]
    public void Losing_unregistered_workers_means_nothing_and_losing_a_stage_recovers_with_status_to_match()
    {
        var s = new CoordinatorState<string>(3, 256000, 2, 1);
        Assert.Equal(ClusterState.Starting, s.Status("q").State);
        s.Registry.Register(WorkerRegistryTests.Node("node-1", ("cpu", "a", null)), Node1);
        s.Registry.Register(WorkerRegistryTests.Node("node-2", ("cpu", "b", null)), Node2);
        s.Model.Adopt(_ => true);
        int epoch = s.Model.BeginPlan();
        s.Model.BeginLoad(new Dictionary<string, long> { ["a"] = 10, ["b"] = 20 }, ModelTrackerTests.Model(epoch, "a", "b"));
        Assert.Null(s.SliceLoaded("a", new SliceLoaded(epoch, "a", 10, 1, false)));
        Assert.NotNull(s.SliceLoaded("b", new SliceLoaded(epoch, "b", 20, 1, false)));
        Assert.Equal("node-2/cpu", s.Describe("b"));

        Assert.Equal(Loss.Nothing, s.Lose(new[] { "zzz" }));
        Assert.Equal(Loss.Recover, s.Lose(s.Registry.NodeUnreachable(Node2)));
        Assert.Equal("?", s.Describe("b")); // gone from the registry: named by its stage's device ("?" in this model)
        Assert.Equal(Loss.Nothing, s.Lose(new[] { "b" })); // already gone
        s.Model.BeginRecovery(DateTime.UtcNow);
        var status = s.Status("q");
        Assert.Equal((ClusterState.Recovering, "recovering"), (status.State, status.StateName));
        Assert.Equal(new[] { "node-1" }, status.Nodes);
    }
}
