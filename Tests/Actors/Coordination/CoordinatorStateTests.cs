using ShardPipe.Actors.Coordination;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;

namespace ShardPipe.Tests.Actors.Coordination;

/// <summary>The coordinator's decisions without an actor: registration, load tracking, losses and admission.</summary>
public class CoordinatorStateTests
{
    private static CoordinatorState State(int maxInFlight = 2, int maxQueued = 1) => new(3, 256000, maxInFlight, maxQueued);

    private static RegisterWorker Node(string name, params (string Device, string Path, string? Unusable)[] devices) =>
        new(3, 256000, name, devices.Select(d => new WorkerDevice(d.Device, 1 << 20, d.Path, d.Unusable)).ToArray(), new[] { "*" });

    private static LoadedModel Model(int epoch, params string[] stagePaths) => new("m", epoch, Array.Empty<PipelineHop>(), Array.Empty<DeviceMapEntry>(),
        new[] { new DeviceUsage("node-1/cpu", 10, 0, 100), new DeviceUsage("node-2/cpu", 20, 0, 100) },
        stagePaths.Select(p => new StageInfo("?", p)).ToArray(), new StopTokens(new long[] { 2 }, 0), 32);

    [Fact]
    public void Registration_refuses_a_node_with_other_wire_settings_and_is_idempotent()
    {
        var s = State();
        Assert.Contains("protocol version 2", Assert.IsType<Registration.Refused>(s.Register(Node("node-1", ("cpu", "a", null)) with { ProtocolVersion = 2 })).Reason);
        Assert.Contains("maximum-frame-size", Assert.IsType<Registration.Refused>(s.Register(Node("node-1", ("cpu", "a", null)) with { MaxFrameSize = 1 })).Reason);
        Assert.Single(Assert.IsType<Registration.Accepted>(s.Register(Node("node-1", ("cpu", "a", null)))).Joined);
        Assert.Empty(Assert.IsType<Registration.Accepted>(s.Register(Node("node-1", ("cpu", "a", null)))).Joined);
        Assert.Single(s.Workers);
    }

    [Theory]
    [InlineData("cuda:0", "cuda:0 requested, but this build has no CUDA", "cuda:0 requested")]
    [InlineData("bogus", null, "is not a device")]
    [InlineData("other/cpu", null, "not a device of one node")]
    public void Devices_a_node_cannot_compute_on_are_refused_and_shown_in_status(string device, string? unusable, string expect)
    {
        var s = State();
        var accepted = Assert.IsType<Registration.Accepted>(s.Register(Node("node-2", (device, "w", unusable))));
        Assert.Empty(accepted.Joined);
        Assert.Contains(expect, Assert.Single(accepted.RefusedDevices).Reason);
        var status = s.Status("q");
        Assert.Equal($"node-2/{device}", Assert.Single(status.Refused!).Device);
        Assert.Empty(s.Workers);
        Assert.Equal("empty", status.State);
    }

    [Fact]
    public void A_load_completes_when_every_slice_of_its_epoch_has_arrived()
    {
        var s = State();
        s.Register(Node("node-1", ("cpu", "a", null)));
        s.Register(Node("node-2", ("cpu", "b", null)));
        int epoch = s.NextEpoch();
        s.BeginLoad("m", epoch, new Dictionary<string, long> { ["a"] = 10, ["b"] = 20 }, Model(epoch, "a", "b"));
        Assert.Equal("loading", s.StateName);
        Assert.Null(s.SliceLoaded("a", new SliceLoaded(epoch - 1, "a", 10, 1, false))); // an old epoch's fact
        Assert.Null(s.SliceLoaded("a", new SliceLoaded(epoch, "a", 10, 1, false)));
        Assert.Null(s.SliceLoaded("a", new SliceLoaded(epoch, "a", 10, 1, false))); // a duplicate
        var loaded = s.SliceLoaded("b", new SliceLoaded(epoch, "b", 20, 2, true));
        Assert.NotNull(loaded);
        Assert.Equal(new long[] { 10, 20 }, loaded.Usage.Select(u => u.LoadedBytes));
        Assert.Equal(new[] { false, true }, loaded.Usage.Select(u => u.Streamed));
        Assert.Equal("ready", s.StateName);
    }

    [Fact]
    public void Losing_a_worker_fails_the_load_it_is_part_of_or_loses_the_model_it_serves()
    {
        var s = State();
        s.Register(Node("node-1", ("cpu", "a", null)));
        s.Register(Node("node-2", ("cpu", "b", null)));
        s.Register(Node("node-3", ("cpu", "c", null)));
        int epoch = s.NextEpoch();
        s.BeginLoad("m", epoch, new Dictionary<string, long> { ["a"] = 10, ["b"] = 20 }, Model(epoch, "a", "b"));
        Assert.Equal((false, false), s.Remove("c")); // not in the load
        Assert.Equal((true, false), s.Remove("b"));
        Assert.True(s.FailLoad(epoch, "node-2 lost"));
        Assert.False(s.FailLoad(epoch, "again")); // only once
        Assert.Equal("failed", s.StateName);
        Assert.Equal("node-2 lost", s.Status("q").Detail);

        int next = s.NextEpoch();
        s.BeginLoad("m", next, new Dictionary<string, long> { ["a"] = 30 }, Model(next, "a"));
        Assert.NotNull(s.SliceLoaded("a", new SliceLoaded(next, "a", 30, 1, false)));
        Assert.Equal((false, true), s.Remove("a"));
    }

    [Fact]
    public void Admission_starts_up_to_the_limit_queues_one_more_refuses_the_rest_and_dequeues_in_order()
    {
        var s = State(maxInFlight: 2, maxQueued: 1);
        var now = DateTime.UtcNow;
        Assert.Equal(Admission.NoModel, s.Admit("r0", now));
        s.Register(Node("node-1", ("cpu", "a", null)));
        int epoch = s.NextEpoch();
        s.BeginLoad("m", epoch, new Dictionary<string, long> { ["a"] = 10 }, Model(epoch, "a"));
        s.SliceLoaded("a", new SliceLoaded(epoch, "a", 10, 1, false));
        Assert.Equal(Admission.Start, s.Admit("r1", now));
        Assert.Equal(Admission.Start, s.Admit("r2", now));
        Assert.Equal(Admission.Queue, s.Admit("r3", now));
        Assert.Equal(Admission.Busy, s.Admit("r4", now));
        Assert.Empty(s.Finish("unknown", now));
        Assert.Equal(new[] { "r3" }, s.Finish("r1", now));
        Assert.Equal(2, s.InFlight);
        Assert.Equal(new[] { "r2" }, s.Stale(now + TimeSpan.FromMinutes(5), TimeSpan.FromMinutes(1)).Where(id => id == "r2"));
        Assert.Equal(Admission.Queue, s.Admit("r5", now));
        Assert.Equal(new[] { "r5" }, s.Unload("gone"));
        Assert.Equal(0, s.InFlight);
        Assert.Equal(Admission.NoModel, s.Admit("r6", now));
    }

    [Fact]
    public void A_withdrawn_queued_request_never_starts_and_the_rest_keep_their_order()
    {
        var s = State(maxInFlight: 1, maxQueued: 3);
        s.Register(Node("node-1", ("cpu", "a", null)));
        s.BeginLoad("m", s.NextEpoch(), new Dictionary<string, long> { ["a"] = 10 }, Model(1, "a"));
        s.SliceLoaded("a", new SliceLoaded(1, "a", 10, 1, false));
        Assert.Equal(Admission.Start, s.Admit("r1", DateTime.UtcNow));
        foreach (var id in new[] { "q1", "q2", "q3" }) Assert.Equal(Admission.Queue, s.Admit(id, DateTime.UtcNow));
        Assert.True(s.Withdraw("q2"));
        Assert.False(s.Withdraw("q2"));
        Assert.Equal(2, s.Queued);
        Assert.Equal(new[] { "q1" }, s.Finish("r1", DateTime.UtcNow));
        Assert.Equal(new[] { "q3" }, s.Finish("q1", DateTime.UtcNow));
    }
}
