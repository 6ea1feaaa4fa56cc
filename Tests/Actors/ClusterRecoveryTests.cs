using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Crashes, not leaves: in-process nodes stopped without a coordinated shutdown (the others find them unreachable and
/// down them). Every request in flight at the fault ends with exactly the tokens of the fault-free run, or the exact
/// typed error.
/// </summary>
[Collection("cluster")]
public class ClusterRecoveryTests
{
    private static readonly string Model = TestPaths.Model("llama_untied");
    private static readonly long[][] Prompt = { new long[] { 5, 17, 42, 9, 3 }, new long[] { 8, 1, 77, 30, 2 } };

    private static Generate Greedy(int n) => Requests.Generate(Prompt, null, n) with { IgnoreEos = true };

    /// <summary>Runs <paramref name="request"/> and kills node <paramref name="victim"/> (0-based) once <paramref name="after"/> steps arrived.</summary>
    private static async Task<ShardPipe.Actors.Client.RequestOutcome> RunAndKill(EmbeddedCluster cluster, Generate request, StageInfo[] stages, int victim, int after)
    {
        int seen = 0;
        var reached = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = cluster.Client.RunAsync(request, stages, TimeSpan.FromSeconds(30), _ => { if (Interlocked.Increment(ref seen) == after) reached.TrySetResult(); });
        await reached.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await cluster.Nodes[victim].Kill();
        return await run.WaitAsync(TimeSpan.FromSeconds(90));
    }

    [Fact]
    public async Task A_worker_crash_mid_generation_resumes_with_the_tokens_of_the_fault_free_run()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        Assert.Contains(loaded.DeviceMap, e => e.Device.StartsWith("node-2/"));
        var expected = await cluster.Client.RunAsync(Greedy(40), loaded.Stages, TimeSpan.FromSeconds(30));
        Assert.Equal(0, expected.RecoveredFaults);
        FaultHooks.For(cluster.Nodes[2].System).BeforeStep = () => Thread.Sleep(20); // keep the generation going past the kill

        var outcome = await RunAndKill(cluster, Greedy(40), loaded.Stages, victim: 1, after: 5);

        Assert.Equal(expected.NewTokens, outcome.NewTokens);
        Assert.Equal(1, outcome.RecoveredFaults);
        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(ClusterState.Ready, status.State);
        Assert.True(status.PlanEpoch > loaded.PlanEpoch, $"epoch {status.PlanEpoch} after {loaded.PlanEpoch}");
        Assert.DoesNotContain("node-2", status.Nodes);
        Assert.Equal(1, status.Recoveries);
        var moved = loaded.DeviceMap.Where(e => e.Device.StartsWith("node-2/")).Select(e => e.Module).ToHashSet();
        Assert.Equal(moved, status.Moved!.Select(m => m.Module).ToHashSet()); // only what node-2 held moved
        Assert.All(status.DeviceMap, e => Assert.DoesNotContain("node-2", e.Device));
        // The modules that stayed were not read again: the survivors kept them (their stage map is unchanged).
        foreach (var e in loaded.DeviceMap.Where(e => !e.Device.StartsWith("node-2/")))
            Assert.Equal(e.Device, status.DeviceMap.Single(x => x.Module == e.Module).Device);
        // And the cluster keeps serving: a new request on the recovered route.
        Assert.Equal(expected.NewTokens, (await cluster.Client.RunAsync(Greedy(40), status.Stages, TimeSpan.FromSeconds(30))).NewTokens);
    }

    [Fact]
    public async Task Merged_requests_survive_a_worker_crash_each_with_its_fault_free_tokens()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        var requests = Enumerable.Range(0, 6).Select(i => Requests.Generate(new[] { Enumerable.Range(0, 4 + i * 5).Select(j => (long)((j * 13 + i * 29 + 3) % 256)).ToArray() }, null, 30 + i * 4)
            with { IgnoreEos = true, PrefillChunk = i == 5 ? 6 : 0, Sampling = i == 4 ? new SamplingSettings(false, 0.9, 20, 0.95, 77) : new SamplingSettings(true, 0, 0, 1, 0) }).ToList();
        var expected = new List<long[][]>();
        foreach (var r in requests) expected.Add((await cluster.Client.RunAsync(r with { RequestId = Guid.NewGuid().ToString("N") }, loaded.Stages, TimeSpan.FromSeconds(30))).NewTokens);
        FaultHooks.For(cluster.Nodes[2].System).BeforeStep = () => Thread.Sleep(20); // keep the generations going past the kill

        int seen = 0;
        var reached = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        foreach (var node in cluster.Nodes) NodeDiagnostics.For(node.System).StepRows.Drain();
        var runs = requests.Select(r => cluster.Client.RunAsync(r, loaded.Stages, TimeSpan.FromSeconds(30),
            _ => { if (Interlocked.Increment(ref seen) == 30) reached.TrySetResult(); })).ToList();
        await reached.Task.WaitAsync(TimeSpan.FromSeconds(30));
        // The requests run merged: the surviving stages' steps carried several requests' rows at once.
        var rows = new[] { cluster.Nodes[0], cluster.Nodes[2] }.SelectMany(n => NodeDiagnostics.For(n.System).StepRows.Drain()).ToList();
        Assert.True(rows.Count > 0 && rows.Max() >= 2, $"no merged step before the crash (rows per step: {string.Join(", ", rows)})");
        await cluster.Nodes[1].Kill(); // node-2: a middle stage, mid-way through every request's merged steps
        var outcomes = await Task.WhenAll(runs).WaitAsync(TimeSpan.FromSeconds(120));

        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(expected[i][0], outcomes[i].NewTokens[0]);
            Assert.Equal(1, outcomes[i].RecoveredFaults);
        }
    }

    [Fact]
    public async Task A_crash_of_the_coordinators_node_moves_the_coordinator_and_the_request_still_completes_with_the_same_tokens()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        var sampled = Requests.Generate(Prompt, null, 30) with { IgnoreEos = true, Sampling = new SamplingSettings(false, 0.9, 20, 0.95, 1234) };
        var expected = await cluster.Client.RunAsync(sampled, loaded.Stages, TimeSpan.FromSeconds(30));
        FaultHooks.For(cluster.Nodes[2].System).BeforeStep = () => Thread.Sleep(20);

        // node-1 is the oldest: it holds the coordinator singleton, and the first stage.
        var outcome = await RunAndKill(cluster, sampled with { RequestId = Guid.NewGuid().ToString("N") }, loaded.Stages, victim: 0, after: 4);

        Assert.Equal(expected.NewTokens, outcome.NewTokens); // a seeded sampler resumes where it stopped
        Assert.Equal(1, outcome.RecoveredFaults);
        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5)); // answered by the coordinator on another node
        Assert.Equal(ClusterState.Ready, status.State);
        Assert.DoesNotContain("node-1", status.Nodes);
        Assert.All(status.DeviceMap, e => Assert.DoesNotContain("node-1", e.Device));
        Assert.True(status.PlanEpoch > loaded.PlanEpoch);
    }

    [Theory]
    [InlineData("recovery")]
    [InlineData("drain")]
    public async Task A_coordinator_crash_mid_plan_leaves_the_model_to_the_next_coordinator_with_the_same_tokens(string plan)
    {
        // A second fault: the coordinator's node dies while the workers load the slices of a new epoch it planned — a
        // recovery from a first fault, or a drain — and did not commit. The next coordinator must still know the model
        // (the last committed record the workers keep) and serve it again, not forget it.
        await using var cluster = await EmbeddedCluster.StartAsync(4, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB,node-4/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        var expected = await cluster.Client.RunAsync(Greedy(20), loaded.Stages, TimeSpan.FromSeconds(30));
        int other = Enumerable.Range(1, 3).Last(i => loaded.DeviceMap.Any(e => e.Device.StartsWith($"node-{i + 1}/"))); // killed, or drained

        using var gate = new ManualResetEventSlim(false);
        var materialising = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        foreach (int i in Enumerable.Range(1, 3).Where(i => i != other))
            FaultHooks.For(cluster.Nodes[i].System).BeforeMaterialise = () => { materialising.TrySetResult(); gate.Wait(TimeSpan.FromSeconds(60)); };
        Task? drain = null;
        if (plan == "recovery") await cluster.Nodes[other].Kill(); // node-1's coordinator re-plans its layers onto the survivors
        else drain = cluster.Client.DrainAsync($"node-{other + 1}", TimeSpan.FromSeconds(20)); // its layers move to the others
        await materialising.Task.WaitAsync(TimeSpan.FromSeconds(30));
        if (plan == "recovery")
        {
            var survivor = Akka.Cluster.Cluster.Get(cluster.Nodes[other == 1 ? 2 : 1].System);
            await Eventually.True(() => survivor.State.Members.All(m => m.Address != cluster.Nodes[other].Address), TimeSpan.FromSeconds(30), "the first victim removed");
        }
        await cluster.Nodes[0].Kill(); // the coordinator, while the others still load the new epoch

        // The next coordinator takes over while they still load (they report no slice yet, only the record).
        ClusterStatus? during = null;
        await Eventually.True(async () => (during = await StatusOrNull(cluster)) is { State: not ClusterState.Starting }, TimeSpan.FromSeconds(60), "a new coordinator decided");
        Assert.True(during!.State is ClusterState.Recovering or ClusterState.Ready, $"{during.StateName}: {during.Detail}");
        gate.Set();
        await Eventually.True(async () => (await StatusOrNull(cluster))?.State == ClusterState.Ready, TimeSpan.FromSeconds(30), "the model served again");
        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
        // Neither the dead node nor the drained one holds anything: the drained node's workers told the next coordinator
        // that their node is being drained, so its recovery planned without it (before session 26 the drain was
        // forgotten and the recovery could put layers back on the drained node).
        Assert.All(status.DeviceMap, e => Assert.False(e.Device.StartsWith("node-1/") || e.Device.StartsWith($"node-{other + 1}/"), e.Device));
        Assert.Equal(expected.NewTokens, (await cluster.Client.RunAsync(Greedy(20), status.Stages, TimeSpan.FromSeconds(30))).NewTokens);
        if (drain is not null) // the drain's answer died with its coordinator: the caller gets an error, never a hang
        {
            await Assert.ThrowsAnyAsync<Exception>(() => drain.WaitAsync(TimeSpan.FromSeconds(60)));
            // and the drain is finished: the drained node is told to leave once the recovery serves without it
            var survivor = Akka.Cluster.Cluster.Get(cluster.Nodes[other == 1 ? 2 : 1].System);
            await Eventually.True(() => survivor.State.Members.All(m => m.Address != cluster.Nodes[other].Address), TimeSpan.FromSeconds(30), $"node-{other + 1} (drained) left");
        }
    }

    [Fact]
    public async Task Survivors_without_room_mark_the_model_degraded_with_the_missing_bytes_and_it_recovers_when_a_node_joins()
    {
        // llama_tied is three ~101 KB blocks: each 150 KB node holds one, so no survivor can take another.
        string model = TestPaths.Model("llama_tied");
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=150KB,node-2/cpu=150KB,node-3/cpu=150KB",
            clientConfig: Akka.Configuration.ConfigurationFactory.ParseString("shardpipe.client.recovery-timeout = 8s"));
        var loaded = await cluster.Client.LoadAsync(Requests.Load(model), TimeSpan.FromMinutes(1));
        var expected = await cluster.Client.RunAsync(Greedy(20), loaded.Stages, TimeSpan.FromSeconds(30));
        FaultHooks.For(cluster.Nodes[0].System).BeforeStep = () => Thread.Sleep(20);

        var ex = await Assert.ThrowsAsync<ShardPipe.ClusterException>(() => RunAndKill(cluster, Greedy(20), loaded.Stages, victim: 2, after: 3));
        Assert.Contains("degraded", ex.Message);
        Assert.Contains("missing", ex.Message);
        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(ClusterState.Degraded, status.State);
        Assert.Contains("missing", status.Detail);

        // A node with room joins: the model recovers by itself, and serves the same tokens.
        await using var extra = new NodeHandle(ShardPipeNode.Start(ShardPipeNode.LoopbackConfig("node-4", new[] { "coordinator", "worker" }, new[] { ("cpu", 1L << 30) }),
            cluster.Nodes[0].Address.ToString()));
        await Eventually.True(async () => (await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5))).State == ClusterState.Ready, TimeSpan.FromSeconds(30), "the model served again");
        status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
        Assert.Contains(status.DeviceMap, e => e.Device.StartsWith("node-4/"));
        Assert.Equal(expected.NewTokens, (await cluster.Client.RunAsync(Greedy(20), status.Stages, TimeSpan.FromSeconds(30))).NewTokens);
    }

    /// <summary>The cluster's status, or null while no coordinator answers (one is moving to another node).</summary>
    private static async Task<ClusterStatus?> StatusOrNull(EmbeddedCluster cluster)
    {
        try { return await cluster.Client.StatusAsync(TimeSpan.FromSeconds(2)); }
        catch (Akka.Actor.AskTimeoutException) { return null; }
    }

    private sealed class NodeHandle(ShardPipeNode node) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await node.Kill();
            node.ReleasePort();
        }
    }
}
