using ShardPipe.Actors.Coordination;
using ShardPipe.Messages;

namespace ShardPipe.Tests.Actors.Coordination;

/// <summary>The coordinator's membership decisions without an actor: registration, refusals, unreachable and leaving nodes.</summary>
public class WorkerRegistryTests
{
    private const string Node1 = "akka.tcp://shardpipe@127.0.0.1:4001", Node2 = "akka.tcp://shardpipe@127.0.0.1:4002";

    internal static RegisterWorker Node(string name, params (string Device, string Path, string? Unusable)[] devices) =>
        new(3, 256000, name, devices.Select(d => new WorkerDevice(d.Device, 1 << 20, d.Path, d.Unusable)).ToArray(), new[] { "*" });

    [Fact]
    public void Registration_refuses_a_node_with_other_wire_settings_and_is_idempotent()
    {
        var r = new WorkerRegistry(3, 256000);
        Assert.Contains("protocol version 2", Assert.IsType<Registration.Refused>(r.Register(Node("node-1", ("cpu", "a", null)) with { ProtocolVersion = 2 }, Node1)).Reason);
        Assert.Contains("maximum-frame-size", Assert.IsType<Registration.Refused>(r.Register(Node("node-1", ("cpu", "a", null)) with { MaxFrameSize = 1 }, Node1)).Reason);
        Assert.Single(Assert.IsType<Registration.Accepted>(r.Register(Node("node-1", ("cpu", "a", null)), Node1)).Joined);
        Assert.Empty(Assert.IsType<Registration.Accepted>(r.Register(Node("node-1", ("cpu", "a", null)), Node1)).Joined);
        Assert.Single(r.Workers);
        Assert.Equal(Node1, r.NodeOf("a"));
    }

    [Theory]
    [InlineData("cuda:0", "cuda:0 requested, but this build has no CUDA", "cuda:0 requested")]
    [InlineData("bogus", null, "is not a device")]
    [InlineData("other/cpu", null, "not a device of one node")]
    public void Devices_a_node_cannot_compute_on_are_refused_and_kept_for_status(string device, string? unusable, string expect)
    {
        var r = new WorkerRegistry(3, 256000);
        var accepted = Assert.IsType<Registration.Accepted>(r.Register(Node("node-2", (device, "w", unusable)), Node2));
        Assert.Empty(accepted.Joined);
        Assert.Contains(expect, Assert.Single(accepted.RefusedDevices).Reason);
        Assert.Equal($"node-2/{device}", Assert.Single(r.Refused).Device);
        Assert.Empty(r.Workers);
    }

    [Fact]
    public void An_unreachable_node_gives_up_its_workers_until_it_is_back_and_a_leaving_one_is_marked()
    {
        var r = new WorkerRegistry(3, 256000);
        r.Register(Node("node-1", ("cpu", "a", null)), Node1);
        r.Register(Node("node-2", ("cpu", "b", null), ("disk", "c", null)), Node2);
        Assert.Equal(new[] { "b", "c" }, r.NodeUnreachable(Node2));
        Assert.True(r.IsUnreachable(Node2));
        Assert.False(r.IsUnreachable(Node1));
        Assert.True(r.Remove("b"));
        Assert.False(r.Remove("b"));
        r.NodeBack(Node2);
        Assert.False(r.IsUnreachable(Node2));
        Assert.False(r.IsLeaving(Node1));
        r.NodeLeaving(Node1);
        Assert.True(r.IsLeaving(Node1));
        Assert.Equal(new[] { "a" }, r.WorkersOn(Node1));
    }
}
