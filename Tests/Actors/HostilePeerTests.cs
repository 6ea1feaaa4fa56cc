using ShardPipe.Actors.Diagnostics;
using Akka.Actor;
using Akka.Configuration;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Settings;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// An ActorSystem that is not a member reaches every actor of a loaded cluster with hostile messages. Afterwards every
/// node is up, the model is served under the same epoch, and a greedy generation equals the one before.
/// </summary>
[Collection("cluster")]
public class HostilePeerTests
{
    private static readonly long[][] Prompt = { new long[] { 5, 17, 42, 9, 3 } };

    [Fact]
    public async Task A_stranger_cannot_register_load_release_step_or_unsettle_a_cluster()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(1));
        var before = await cluster.Client.RunAsync(Requests.Generate(Prompt, null, 12) with { IgnoreEos = true }, loaded.Stages, TimeSpan.FromSeconds(30));

        var strangerConfig = ConfigurationFactory.ParseString("akka.actor.provider = remote\nakka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }");
        using var stranger = ActorSystem.Create("shardpipe", ReferenceConfig.Over(strangerConfig));
        try
        {
            var probe = new Akka.TestKit.Xunit2.TestKit(stranger);
            var node2 = cluster.Nodes[1].Address;
            async Task<IActorRef> At(Address node, string path) => await stranger.ActorSelection(new RootActorPath(node) / "user" / path).ResolveOne(TimeSpan.FromSeconds(5));
            // Untrusted mode: a stranger cannot even look the workers up by selection; it uses the paths status shows.
            await Assert.ThrowsAsync<ActorNotFoundException>(() => At(node2, "device-0"));
            var worker2 = ((ExtendedActorSystem)stranger).Provider.ResolveActorRef(loaded.Stages.First(s => s.Device.StartsWith("node-2/")).WorkerPath);
            var proxy = await At(cluster.Nodes[0].Address, "coordinator-proxy");
            string foreignWorker = loaded.Stages.First(s => s.Device.StartsWith("node-3/")).WorkerPath;
            long frame = cluster.Nodes[0].Settings.MaxFrameSize;

            // A registration naming another node's worker, with a huge budget, and one with a bogus device: refused.
            proxy.Tell(new RegisterWorker(Protocol.Version, frame, "evil", new[] { new WorkerDevice("cpu", long.MaxValue, foreignWorker) }, new[] { "*" }), probe.TestActor);
            Assert.Contains("not a worker member", probe.ExpectMsg<WorkerRefused>(TimeSpan.FromSeconds(10)).Reason);
            proxy.Tell(new RegisterWorker(Protocol.Version, frame, "evil", new[] { new WorkerDevice("bogus", -1, "akka.tcp://shardpipe@10.0.0.1:1/user/x") }, new[] { "*" }), probe.TestActor);
            probe.ExpectMsg<WorkerRefused>(TimeSpan.FromSeconds(10));

            // A slice from a stranger is refused before anything is read; a release and a step are dropped.
            worker2.Tell(new LoadSlice(loaded.PlanEpoch, "/etc", null, "float32", "{}", new[] { "model" }, 1, null, Array.Empty<PipelineHop>(), Array.Empty<SliceTensor>()), probe.TestActor);
            Assert.Contains("only from the cluster's coordinator", probe.ExpectMsg<SliceFailed>(TimeSpan.FromSeconds(10)).Reason);
            worker2.Tell(new ReleaseSlice(loaded.PlanEpoch), probe.TestActor);
            worker2.Tell(new StageInput("x", 0, 1, null, new[] { new long[] { 1 } }, new[] { new long[] { 1 } }, new[] { new long[] { 0 } },
                Akka.Serialization.Serialization.SerializedActorPath(probe.TestActor), null, loaded.PlanEpoch, null), probe.TestActor);
            // Weights are streamed only to workers of the cluster.
            var reader = ((ExtendedActorSystem)stranger).Provider.ResolveActorRef($"{node2}/user/shard-reader");
            reader.Tell(new ReadTensor("r", TestPaths.Model("llama_untied"), null, "model.embed_tokens.weight", 4), probe.TestActor);
            Assert.Contains("only to workers", probe.ExpectMsg<ReadFailed>(TimeSpan.FromSeconds(10)).Reason);
            // Chunks with hostile counts, and a handshake claiming another protocol: dropped or ignored.
            worker2.Tell(new MessageChunk("t", 0, -1, "stage", 0, new byte[16]), probe.TestActor);
            worker2.Tell(new MessageChunk("u", 0, 1_000_000_000, "stage", 0, new byte[16]), probe.TestActor);
            (await At(node2, "handshake")).Tell(new Hello(Protocol.Version + 7, 1, "evil"), probe.TestActor);
            // PoisonPill and Kill from outside are refused when they are deserialised (they would stop the actor).
            long Refused(int node) => NodeDiagnostics.For(cluster.Nodes[node].System).RefusedFromWire;
            long refused1 = Refused(0), refused2 = Refused(1);
            worker2.Tell(PoisonPill.Instance, probe.TestActor);
            worker2.Tell(Kill.Instance, probe.TestActor);
            proxy.Tell(PoisonPill.Instance, probe.TestActor);
            await Eventually.True(() => Refused(1) == refused2 + 2 && Refused(0) == refused1 + 1, TimeSpan.FromSeconds(10),
                "node-2 refused the PoisonPill and the Kill, node-1 the PoisonPill, at deserialisation");

            // A stranger with Akka's stock settings sends objects its JSON serializer writes with their type names:
            // refused on arrival (no serializer that takes type names from the wire is reachable).
            using var plain = ActorSystem.Create("shardpipe", ConfigurationFactory.ParseString(
                "akka.actor.provider = remote\nakka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }\nakka.loglevel = OFF\nakka.stdout-loglevel = OFF"));
            var viaPlain = ((ExtendedActorSystem)plain).Provider.ResolveActorRef(loaded.Stages.First(s => s.Device.StartsWith("node-2/")).WorkerPath);
            refused2 = Refused(1);
            viaPlain.Tell(new Dictionary<string, object> { ["$type"] = "System.IO.FileInfo, System.IO.FileSystem", ["fileName"] = "/etc/passwd" });
            viaPlain.Tell(new Exception("typed by name"));
            await Eventually.True(() => Refused(1) == refused2 + 2, TimeSpan.FromSeconds(10), "node-2 refused both objects typed by name at deserialisation");
            await plain.Terminate();
        }
        finally
        {
            await stranger.Terminate();
        }

        // Every node is still a member, the model is served under the same epoch, and it answers as before.
        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
        Assert.Equal((ClusterState.Ready, loaded.PlanEpoch, 3), (status.State, status.PlanEpoch, status.Nodes.Length));
        Assert.All(cluster.Nodes, n => Assert.Equal(Akka.Cluster.MemberStatus.Up, Akka.Cluster.Cluster.Get(n.System).SelfMember.Status));
        var after = await cluster.Client.RunAsync(Requests.Generate(Prompt, null, 12) with { IgnoreEos = true }, status.Stages, TimeSpan.FromSeconds(30));
        Assert.Equal(before.NewTokens, after.NewTokens);
        Assert.Equal(0, after.RecoveredFaults);
    }

    [Fact]
    public async Task A_member_without_the_worker_or_coordinator_role_cannot_register_or_send_slices()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(2, "node-1/cpu=1GiB,node-2/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(1));
        // A member of the cluster, with a role of its own: no devices, no coordinator.
        await using var observer = new LeavingNode(ShardPipeNode.Start(ShardPipeNode.LoopbackConfig("observer", new[] { "observer" }, Array.Empty<(string, long)>()),
            cluster.Nodes[0].Address.ToString()));
        var system = observer.Node.System;
        await Eventually.True(() => Akka.Cluster.Cluster.Get(system).SelfMember.Status == Akka.Cluster.MemberStatus.Up, TimeSpan.FromSeconds(30), "the observer is up");
        var probe = new Akka.TestKit.Xunit2.TestKit(system);
        var fake = probe.CreateTestProbe("fake-worker");
        observer.Node.Coordinator.Tell(new RegisterWorker(Protocol.Version, cluster.Nodes[0].Settings.MaxFrameSize, "observer",
            new[] { new WorkerDevice("cpu", 1L << 40, Akka.Serialization.Serialization.SerializedActorPath(fake.Ref)) }, new[] { "*" }), probe.TestActor);
        Assert.Contains("not a worker member", probe.ExpectMsg<WorkerRefused>(TimeSpan.FromSeconds(10)).Reason);
        var worker = ((ExtendedActorSystem)system).Provider.ResolveActorRef(loaded.Stages[0].WorkerPath);
        worker.Tell(new LoadSlice(loaded.PlanEpoch + 1, "/etc", null, "float32", "{}", new[] { "model" }, 1, null, Array.Empty<PipelineHop>(), Array.Empty<SliceTensor>()), probe.TestActor);
        Assert.Contains("only from the cluster's coordinator", probe.ExpectMsg<SliceFailed>(TimeSpan.FromSeconds(10)).Reason);

        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
        Assert.Equal((ClusterState.Ready, loaded.PlanEpoch), (status.State, status.PlanEpoch));
        Assert.DoesNotContain("observer", status.Nodes);
        Assert.Equal(3, (await cluster.Client.RunAsync(Requests.Generate(Prompt, null, 3) with { IgnoreEos = true }, status.Stages, TimeSpan.FromSeconds(30))).Steps);
    }

    private sealed class LeavingNode(ShardPipeNode node) : IAsyncDisposable
    {
        public ShardPipeNode Node => node;
        public async ValueTask DisposeAsync()
        {
            try { await node.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10)); }
            catch (TimeoutException) { await node.Kill(); node.ReleasePort(); }
        }
    }
}
