using ShardPipe.Actors.Client;
using ShardPipe.Host.Bench;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Real faults on <c>shardpipe node</c> processes: SIGKILL, and SIGSTOP shorter and longer than the failure detector's
/// threshold. Each request ends with the tokens of the fault-free run.
/// </summary>
[Collection("cluster")]
public sealed class ProcessFaultTests
{
    private static readonly long[][] Prompt = { new long[] { 5, 17, 42, 9, 3 } };

    [Fact]
    public async Task Killed_and_paused_node_processes_leave_every_request_with_the_fault_free_tokens()
    {
        // Every step sleeps 15 ms, so a 60-token generation runs long enough to be hit mid-way.
        // Under mutual TLS (certificates as `shardpipe cert` makes them): the fault tests run secure at least once.
        using var nodes = new NodeProcesses(3, _ => "shardpipe { devices = [ { device = cpu, budget = \"1GiB\" } ], compute-threads = 1, debug.step-delay = 15ms }", secure: true);
        await using var client = ShardPipeClient.Connect(ContactPoints.Parse(nodes.Contacts), nodes.ClientConfig);
        try { await client.WaitForNodesAsync(3, TimeSpan.FromSeconds(90)); }
        catch (ShardPipe.ClusterException ex)
        {
            throw new Xunit.Sdk.XunitException($"{ex.Message}\n" + string.Join("\n", Enumerable.Range(1, 3).Select(i => $"node-{i}:\n{nodes.Tail(i)}")));
        }
        var loaded = await client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(2));
        Generate Request() => Requests.Generate(Prompt, null, 60) with { IgnoreEos = true };
        var expected = await client.RunAsync(Request(), loaded.Stages, TimeSpan.FromSeconds(60));

        async Task<RequestOutcome> Hit(Action fault, StageInfo[] stages)
        {
            int seen = 0;
            var tenth = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var run = client.RunAsync(Request(), stages, TimeSpan.FromSeconds(30), _ => { if (Interlocked.Increment(ref seen) == 10) tenth.TrySetResult(); });
            await tenth.Task.WaitAsync(TimeSpan.FromSeconds(60));
            fault();
            return await run.WaitAsync(TimeSpan.FromSeconds(120));
        }
        async Task<ClusterStatus> Serving(int nodeCount)
        {
            try
            {
                return await Eventually(async () =>
                {
                    var s = await client.StatusAsync(TimeSpan.FromSeconds(5));
                    return s.State == ClusterState.Ready && s.Nodes.Length == nodeCount ? s : null;
                });
            }
            catch (Xunit.Sdk.XunitException ex)
            {
                throw new Xunit.Sdk.XunitException($"{ex.Message}\n" + string.Join("\n", Enumerable.Range(1, 3).Select(i => $"node-{i}:\n{nodes.Tail(i)}")));
            }
        }

        // A pause shorter than the failure detector's threshold: no fault at all.
        var brief = await Hit(() => { nodes.Pause(3); Thread.Sleep(1500); nodes.Resume(3); }, loaded.Stages);
        Assert.Equal(expected.NewTokens, brief.NewTokens);
        Assert.Equal(0, brief.RecoveredFaults);

        // SIGKILL of a worker process.
        var killed = await Hit(() => nodes.Kill(2), loaded.Stages);
        Assert.Equal(expected.NewTokens, killed.NewTokens);
        Assert.Equal(1, killed.RecoveredFaults);
        nodes.Start(2); // a fresh node-2 joins; the model stays where it is, and node-2 is capacity again
        var status = await Serving(3);

        // A pause past the threshold: handled as lost; when the node wakes it was downed, and it rejoins fresh.
        var paused = await Hit(() => { nodes.Pause(3); Thread.Sleep(10_000); nodes.Resume(3); }, status.Stages);
        Assert.Equal(expected.NewTokens, paused.NewTokens);
        Assert.Equal(1, paused.RecoveredFaults);
        status = await Serving(3); // node-3 restarted itself and registered again
        Assert.Equal(expected.NewTokens, (await client.RunAsync(Request(), status.Stages, TimeSpan.FromSeconds(60))).NewTokens);
    }

    [Fact]
    public async Task A_SIGKILL_of_the_coordinators_node_process_mid_generation_moves_the_coordinator_and_the_request_ends_with_the_fault_free_tokens()
    {
        // node-1 is the oldest: it holds the coordinator singleton, and the first stage. Its successor downs it at once
        // (fast failover), the coordinator starts there, adopts the model from the workers' reports and re-plans the
        // lost stage; the request resumes with a seeded sampler where it stopped.
        using var nodes = new NodeProcesses(3, _ => "shardpipe { devices = [ { device = cpu, budget = \"1GiB\" } ], compute-threads = 1, debug.step-delay = 15ms }\nakka.loglevel = INFO");
        await using var client = ShardPipeClient.Connect(ContactPoints.Parse(nodes.Contacts));
        try { await client.WaitForNodesAsync(3, TimeSpan.FromSeconds(90)); }
        catch (ShardPipe.ClusterException ex)
        {
            throw new Xunit.Sdk.XunitException($"{ex.Message}\n" + string.Join("\n", Enumerable.Range(1, 3).Select(i => $"node-{i}:\n{nodes.Tail(i, 40)}")));
        }
        var loaded = await client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(2));
        Generate Request() => Requests.Generate(Prompt, null, 60) with { IgnoreEos = true, Sampling = new SamplingSettings(false, 0.9, 20, 0.95, 1234) };
        var expected = await client.RunAsync(Request(), loaded.Stages, TimeSpan.FromSeconds(60));
        Assert.Contains(nodes.Log(1), l => l.Contains("coordinator started on", StringComparison.Ordinal)); // the victim holds it
        Assert.Contains(loaded.Stages, s => s.Device.StartsWith("node-1/", StringComparison.Ordinal));

        int seen = 0;
        var tenth = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = client.RunAsync(Request(), loaded.Stages, TimeSpan.FromSeconds(30), _ => { if (Interlocked.Increment(ref seen) == 10) tenth.TrySetResult(); });
        await tenth.Task.WaitAsync(TimeSpan.FromSeconds(60));
        nodes.Kill(1);
        RequestOutcome outcome;
        try { outcome = await run.WaitAsync(TimeSpan.FromSeconds(120)); }
        catch (Exception ex) when (ex is ShardPipe.ClusterException or TimeoutException)
        {
            throw new Xunit.Sdk.XunitException($"{ex.Message}\n" + string.Join("\n", new[] { 2, 3 }.Select(i => $"node-{i}:\n{nodes.Tail(i, 40)}")));
        }

        Assert.Equal(expected.NewTokens, outcome.NewTokens);
        Assert.Equal(1, outcome.RecoveredFaults);
        Assert.Contains(new[] { 2, 3 }, i => nodes.Log(i).Any(l => l.Contains("coordinator started on", StringComparison.Ordinal)));
        var status = await client.StatusAsync(TimeSpan.FromSeconds(5)); // answered by the coordinator on a survivor
        Assert.Equal(ClusterState.Ready, status.State);
        Assert.DoesNotContain("node-1", status.Nodes);
        Assert.All(status.DeviceMap, e => Assert.DoesNotContain("node-1", e.Device));
        Assert.True(status.PlanEpoch > loaded.PlanEpoch);
        Assert.Equal(expected.NewTokens, (await client.RunAsync(Request(), status.Stages, TimeSpan.FromSeconds(60))).NewTokens);
    }

    private static async Task<T> Eventually<T>(Func<Task<T?>> probe) where T : class
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(90);
        while (true)
        {
            try
            {
                if (await probe() is { } value) return value;
            }
            catch (Akka.Actor.AskTimeoutException) { }
            if (DateTime.UtcNow > deadline) throw new Xunit.Sdk.XunitException("the cluster did not serve again with every node within 90 s");
            await Task.Delay(250);
        }
    }
}
