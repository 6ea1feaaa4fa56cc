using ShardPipe.Actors.Coordination;
using ShardPipe.Actors.Workers;
using ShardPipe.Placement;

namespace ShardPipe.Tests.Actors.Coordination;

/// <summary>The speeds workers report: kept per worker (the latest wins), shown in status, bad values ignored; and the step-based refresh.</summary>
public class WorkerSpeedTests
{
    private const string Node1 = "akka.tcp://shardpipe@127.0.0.1:4001", Node2 = "akka.tcp://shardpipe@127.0.0.1:4002";

    [Fact]
    public void The_registry_keeps_each_workers_latest_speed_and_ignores_what_is_not_a_positive_number()
    {
        var r = new WorkerRegistry(3, 256000);
        r.Register(WorkerRegistryTests.Node("node-1", ("cpu", "a", null)) with { Speed = 2e9 }, Node1);
        r.Register(WorkerRegistryTests.Node("node-2", ("cpu", "b", null)), Node2); // an older peer: no speed
        Assert.Equal(new Dictionary<DeviceId, double> { [DeviceId.Parse("node-1/cpu")] = 2e9 }, r.Speeds());
        r.Register(WorkerRegistryTests.Node("node-1", ("cpu", "a", null)) with { Speed = 3e9 }, Node1); // a repeat refreshes it
        r.Register(WorkerRegistryTests.Node("node-2", ("cpu", "b", null)) with { Speed = double.NaN }, Node2);
        r.Register(WorkerRegistryTests.Node("node-2", ("cpu", "b", null)) with { Speed = -1 }, Node2);
        Assert.Equal(3e9, Assert.Single(r.Speeds()).Value);
        Assert.Equal(3e9, Assert.Single(r.Timings(), t => t.Device == "node-1/cpu").Speed);
        Assert.True(r.Remove("a"));
        Assert.Empty(r.Speeds());
    }

    [Fact]
    public void Step_timings_replace_the_calibration_only_after_enough_single_row_steps_of_this_slice()
    {
        var ms = Enumerable.Repeat(10.0, 40).ToList();
        var oneRow = Enumerable.Repeat(1.0, 40).ToList();
        Assert.Equal(1e8, DeviceSpeed.FromSteps(1_000_000, ms, oneRow, sinceLoad: 40)); // 1 MB in 10 ms
        Assert.Null(DeviceSpeed.FromSteps(1_000_000, ms, oneRow, sinceLoad: DeviceSpeed.MinSteps - 1)); // older steps timed another slice
        Assert.Null(DeviceSpeed.FromSteps(1_000_000, ms, Enumerable.Repeat(4.0, 40).ToList(), sinceLoad: 40)); // merged steps
        Assert.Null(DeviceSpeed.FromSteps(0, ms, oneRow, sinceLoad: 40));
        // Only the steps since the load count: 8 old slow ones are left out.
        var mixed = Enumerable.Repeat(1000.0, 8).Concat(Enumerable.Repeat(10.0, 32)).ToList();
        Assert.Equal(1e8, DeviceSpeed.FromSteps(1_000_000, mixed, oneRow, sinceLoad: 32));
    }
}
