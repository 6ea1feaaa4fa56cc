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
        Assert.Equal("ready", status.State);
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
}
