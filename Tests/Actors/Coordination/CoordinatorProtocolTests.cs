using Akka.Actor;
using Akka.Configuration;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using ShardPipe.Actors.Coordination;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Settings;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors.Coordination;

/// <summary>
/// The coordinator's protocol against TestKit probes standing in for device workers and clients: registration,
/// planning and load tracking, failure of a load, admission, and the first step of a request.
/// </summary>
public class CoordinatorProtocolTests : TestKit
{
    private static readonly Config NodeConfig = ConfigurationFactory.ParseString(@"
akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
akka.cluster.roles = [coordinator]
shardpipe.node-name = node-1
shardpipe.max-in-flight = 1
shardpipe.max-queued = 1
shardpipe.load-timeout = 30s
shardpipe.start-window = 300ms").WithFallback(ShardPipeNode.Reference);

    private readonly NodeSettings _settings;
    private static readonly string Model = TestPaths.Model("llama_untied");

    public CoordinatorProtocolTests() : base(NodeConfig)
    {
        _settings = NodeSettings.From(NodeConfig);
    }

    private static string PathOf(IActorRef a) => Akka.Serialization.Serialization.SerializedActorPath(a);

    private RegisterWorker Registration(string node, TestProbe worker, string device = "cpu", string? unusable = null) =>
        new(Protocol.Version, _settings.MaxFrameSize, node, new[] { new WorkerDevice(device, 1L << 30, PathOf(worker.Ref), unusable) }, new[] { "*" });

    private (IActorRef Coordinator, TestProbe[] Workers) Registered(int count)
    {
        var coordinator = Sys.ActorOf(CoordinatorActor.Props(_settings));
        var workers = Enumerable.Range(1, count).Select(i => CreateTestProbe($"worker-{i}")).ToArray();
        foreach (var w in workers) w.IgnoreMessages(m => m is ModelCommitted); // what a real worker keeps for a coordinator that moves
        for (int i = 0; i < count; i++)
        {
            coordinator.Tell(Registration($"node-{i + 1}", workers[i]), workers[i].Ref);
            workers[i].ExpectMsg<WorkerRegistered>();
        }
        return (coordinator, workers);
    }

    private static LoadModel Load() => new(Guid.NewGuid().ToString("N"), Model, null, "float32", "balanced", null, null);

    /// <summary>Sends a load and answers every slice as a worker would; returns the slices and the client's answer.</summary>
    private (LoadSlice[] Slices, ModelLoaded Loaded) LoadOn(IActorRef coordinator, TestProbe[] workers)
    {
        coordinator.Tell(Load(), TestActor);
        var slices = workers.Select(w => w.ExpectMsg<LoadSlice>(TimeSpan.FromSeconds(10))).ToArray();
        for (int i = 0; i < workers.Length; i++)
            coordinator.Tell(new SliceLoaded(slices[i].PlanEpoch, PathOf(workers[i].Ref), slices[i].PlannedBytes, slices[i].Tensors.Length, false), workers[i].Ref);
        return (slices, ExpectMsg<ModelLoaded>(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public void A_registered_worker_is_answered_once_per_registration_and_a_foreign_protocol_is_refused()
    {
        var coordinator = Sys.ActorOf(CoordinatorActor.Props(_settings));
        var worker = CreateTestProbe();
        coordinator.Tell(Registration("node-1", worker), worker.Ref);
        worker.ExpectMsg<WorkerRegistered>();
        coordinator.Tell(Registration("node-1", worker), worker.Ref); // the worker's retry: still one worker
        worker.ExpectMsg<WorkerRegistered>();
        coordinator.Tell(new GetStatus("s"), TestActor);
        Assert.Equal(new[] { "node-1" }, ExpectMsg<ClusterStatus>().Nodes);

        var old = CreateTestProbe();
        coordinator.Tell(Registration("node-2", old) with { ProtocolVersion = Protocol.Version - 1 }, old.Ref);
        Assert.Contains("protocol version", old.ExpectMsg<WorkerRefused>().Reason);
        var gpu = CreateTestProbe();
        coordinator.Tell(Registration("node-3", gpu, "cuda:0", "cuda:0 requested, but this build has no CUDA"), gpu.Ref);
        Assert.Contains("no CUDA", gpu.ExpectMsg<WorkerRefused>().Reason);
        coordinator.Tell(new GetStatus("s"), TestActor);
        var status = ExpectMsg<ClusterStatus>();
        Assert.Equal(new[] { "node-1" }, status.Nodes);
        Assert.Equal("node-3/cuda:0", Assert.Single(status.Refused!).Device);
    }

    [Fact]
    public void A_load_plans_slices_for_every_worker_under_one_epoch_and_answers_when_all_are_in()
    {
        var (coordinator, workers) = Registered(2);
        var (slices, loaded) = LoadOn(coordinator, workers);
        Assert.Single(slices.Select(s => s.PlanEpoch).Distinct());
        Assert.Equal(slices[0].PlanEpoch, loaded.PlanEpoch);
        Assert.Equal(new[] { "node-1", "node-2" }, loaded.DeviceMap.Select(e => e.Device.Split('/')[0]).Distinct());
        Assert.Equal(slices.Sum(s => s.PlannedBytes), loaded.Devices.Sum(d => d.LoadedBytes));
        coordinator.Tell(new GetStatus("s"), TestActor);
        var status = ExpectMsg<ClusterStatus>();
        Assert.Equal((ClusterState.Ready, loaded.PlanEpoch), (status.State, status.PlanEpoch));
    }

    [Fact]
    public void A_second_load_waits_for_the_first_and_a_failed_slice_fails_the_load_and_releases_every_slice()
    {
        var (coordinator, workers) = Registered(2);
        coordinator.Tell(Load(), TestActor);
        var slice = workers[0].ExpectMsg<LoadSlice>(TimeSpan.FromSeconds(10));
        workers[1].ExpectMsg<LoadSlice>();
        coordinator.Tell(Load(), TestActor);
        Assert.Contains("in progress", ExpectMsg<LoadFailed>().Reason);
        coordinator.Tell(new SliceFailed(slice.PlanEpoch, PathOf(workers[0].Ref), "node-1/cpu: disk on fire"), workers[0].Ref);
        Assert.Contains("disk on fire", ExpectMsg<LoadFailed>().Reason);
        Assert.Equal(slice.PlanEpoch, workers[1].ExpectMsg<ReleaseSlice>().PlanEpoch);
        coordinator.Tell(new GetStatus("s"), TestActor);
        var status = ExpectMsg<ClusterStatus>();
        Assert.Equal(ClusterState.Failed, status.State);
        Assert.Contains("disk on fire", status.Detail);
    }

    [Fact]
    public void A_worker_that_dies_mid_load_fails_it_naming_its_node()
    {
        var (coordinator, workers) = Registered(2);
        coordinator.Tell(Load(), TestActor);
        workers[0].ExpectMsg<LoadSlice>(TimeSpan.FromSeconds(10));
        workers[1].ExpectMsg<LoadSlice>();
        Sys.Stop(workers[1].Ref);
        Assert.Contains("node-2", ExpectMsg<LoadFailed>(TimeSpan.FromSeconds(10)).Reason);
    }

    [Fact]
    public void A_bad_model_fails_the_load_with_its_reason_and_the_coordinator_keeps_its_workers()
    {
        var (coordinator, _) = Registered(2);
        coordinator.Tell(Load() with { Model = "/nonexistent/model" }, TestActor);
        ExpectMsg<LoadFailed>(TimeSpan.FromSeconds(10));
        coordinator.Tell(Load() with { MaxMemory = "node-9/cpu=1GiB" }, TestActor);
        Assert.Contains("node-9/cpu", ExpectMsg<LoadFailed>(TimeSpan.FromSeconds(10)).Reason);
        coordinator.Tell(Load() with { MaxMemory = "node-1/cpu=lots" }, TestActor);
        ExpectMsg<LoadFailed>(TimeSpan.FromSeconds(10));
        coordinator.Tell(new GetStatus("s"), TestActor);
        Assert.Equal(2, ExpectMsg<ClusterStatus>().Nodes.Length);
    }

    [Fact]
    public void Requests_start_at_the_first_hop_with_hugging_faces_positions_up_to_the_limit_then_queue_then_busy()
    {
        var (coordinator, workers) = Registered(2);
        var (_, loaded) = LoadOn(coordinator, workers);
        var first = workers.Single(w => PathOf(w.Ref) == loaded.Stages[0].WorkerPath);
        var ids = new[] { new long[] { 5, 6, 7 } };
        var mask = new[] { new long[] { 0, 1, 1 } };
        var sampling = new SamplingSettings(true, 0, 0, 1, 0);

        coordinator.Tell(new Generate("g1", ids, mask, 4, false, sampling), TestActor);
        var step = first.ExpectMsg<StageInput>();
        Assert.Equal(("g1", 0, 0, loaded.PlanEpoch), (step.RequestId, step.Step, step.Hop, step.PlanEpoch));
        Assert.Equal(new[] { new long[] { 1, 0, 1 } }, step.PositionIds); // cumsum(mask) − 1, padded slots 1
        Assert.Equal(4, step.Generation!.MaxNewTokens);

        coordinator.Tell(new Forward("f1", ids, mask, null), TestActor); // max-in-flight = 1: queued
        coordinator.Tell(new Generate("g2", ids, null, 1, false, sampling), TestActor); // max-queued = 1: refused
        Assert.Contains("busy", ExpectMsg<RequestFailed>().Reason);
        first.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        coordinator.Tell(new GenerationDone("g1", 4));
        var forward = first.ExpectMsg<StageInput>();
        Assert.Equal("f1", forward.RequestId);
        Assert.Null(forward.Generation);
        Assert.Equal(new[] { new long[] { 0, 1, 2 } }, forward.PositionIds); // forward's default: 0..T−1 even when padded

        coordinator.Tell(new GenerationDone("f1", 0));
        coordinator.Tell(new Generate("g3", new[] { new long[] { 1, 99999 } }, null, 2, false, sampling), TestActor);
        Assert.Contains("outside the vocabulary", ExpectMsg<RequestFailed>().Reason);
        coordinator.Tell(new Generate("g4", ids, null, 0, false, sampling), TestActor);
        Assert.Contains("max_new_tokens", ExpectMsg<RequestFailed>().Reason);
        coordinator.Tell(new Generate("g5", ids, null, 5000, false, sampling), TestActor); // llama_untied: 256 positions, the node allows 4096
        Assert.Contains("exceeds this cluster's limit of 4096", ExpectMsg<RequestFailed>().Reason);
        coordinator.Tell(new Forward("f2", new[] { Enumerable.Range(2, 300).Select(i => (long)(i % 200 + 2)).ToArray() }, null, null), TestActor);
        Assert.Contains("the model takes at most 256 positions", ExpectMsg<RequestFailed>().Reason);
    }

    [Fact]
    public void A_lost_stage_is_replanned_onto_the_survivor_under_a_new_epoch_while_requests_are_refused_retryably()
    {
        var (coordinator, workers) = Registered(2);
        var (slices, loaded) = LoadOn(coordinator, workers);
        Sys.Stop(workers[1].Ref); // node-2's worker is lost
        var replan = workers[0].ExpectMsg<LoadSlice>(TimeSpan.FromSeconds(10));
        Assert.Equal(loaded.PlanEpoch + 1, replan.PlanEpoch);
        Assert.Equal(slices[0].ModulePrefixes.Concat(slices[1].ModulePrefixes).Order(), replan.ModulePrefixes.Order()); // node-1 keeps its own and takes node-2's
        coordinator.Tell(new Generate("g1", new[] { new long[] { 5, 6 } }, null, 2, false, new SamplingSettings(true, 0, 0, 1, 0)), TestActor);
        var refused = ExpectMsg<RequestFailed>();
        Assert.True(refused.Retryable, refused.Reason);
        coordinator.Tell(new SliceLoaded(replan.PlanEpoch, PathOf(workers[0].Ref), replan.PlannedBytes, replan.Tensors.Length, false), workers[0].Ref);
        coordinator.Tell(new GetStatus("s"), TestActor);
        var status = ExpectMsg<ClusterStatus>();
        Assert.Equal((ClusterState.Ready, replan.PlanEpoch, 1), (status.State, status.PlanEpoch, status.Recoveries));
        Assert.Equal(slices[1].ModulePrefixes.Order(), status.Moved!.Select(m => m.Module).Order());
        Assert.All(status.DeviceMap, e => Assert.Equal("node-1/cpu", e.Device));
    }

    [Fact]
    public void A_coordinator_that_moved_adopts_the_model_its_workers_report_and_releases_stale_slices()
    {
        var first = Sys.ActorOf(CoordinatorActor.Props(_settings));
        var workers = new[] { CreateTestProbe("w-1"), CreateTestProbe("w-2") };
        for (int i = 0; i < 2; i++)
        {
            first.Tell(Registration($"node-{i + 1}", workers[i]), workers[i].Ref);
            workers[i].ExpectMsg<WorkerRegistered>();
        }
        var (slices, loaded) = LoadOn(first, workers);
        var records = workers.Select(w => w.ExpectMsg<ModelCommitted>().Record).ToArray();
        Sys.Stop(first); // its node died; the singleton starts elsewhere and knows nothing

        var moved = Sys.ActorOf(CoordinatorActor.Props(_settings));
        var stale = CreateTestProbe("w-3");
        for (int i = 0; i < 2; i++)
        {
            var held = new HeldSlice(slices[i].PlanEpoch, slices[i].Model, slices[i].ModulePrefixes, slices[i].PlannedBytes, records[i]);
            moved.Tell(Registration($"node-{i + 1}", workers[i]) with { Holding = held }, workers[i].Ref);
            workers[i].ExpectMsg<WorkerRegistered>();
        }
        moved.Tell(Registration("node-3", stale) with { Holding = new HeldSlice(loaded.PlanEpoch - 1, Model, new[] { "model" }, 1, null) }, stale.Ref);
        stale.ExpectMsg<WorkerRegistered>();
        AwaitAssert(() =>
        {
            moved.Tell(new GetStatus("s"), TestActor);
            var status = ExpectMsg<ClusterStatus>();
            Assert.Equal((ClusterState.Ready, loaded.PlanEpoch), (status.State, status.PlanEpoch));
            Assert.Equal(loaded.DeviceMap, status.DeviceMap);
        }, TimeSpan.FromSeconds(10));
        Assert.Equal(loaded.PlanEpoch - 1, stale.FishForMessage<ReleaseSlice>(_ => true, TimeSpan.FromSeconds(10)).PlanEpoch);
        // It serves requests on the adopted route, under the adopted epoch.
        moved.Tell(new Generate("g1", new[] { new long[] { 5, 6 } }, null, 2, false, new SamplingSettings(true, 0, 0, 1, 0)), TestActor);
        var firstStage = workers.Single(w => PathOf(w.Ref) == loaded.Stages[0].WorkerPath);
        Assert.Equal(loaded.PlanEpoch, firstStage.FishForMessage<StageInput>(_ => true, TimeSpan.FromSeconds(5)).PlanEpoch);
    }
}
