using ShardPipe.Actors.Client;
using ShardPipe.Host.Bench;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Live moves on <c>shardpipe node</c> processes under mutual TLS: a worker node is drained while four requests stream
/// (each ends with its fault-free tokens, the drained process exits 0, no node logs a recovery), then a node joins and
/// <c>rebalance</c> moves layers onto it while four requests stream (same tokens). One cluster for both, to keep it short.
/// </summary>
[Collection("cluster")]
public sealed class ProcessDrainTests
{
    private static readonly long[][] Prompt = { new long[] { 5, 17, 42, 9, 3 } };
    private const int Streams = 4;

    [Fact]
    public async Task Draining_a_node_and_rebalancing_onto_a_node_that_joined_keep_every_streaming_requests_tokens()
    {
        // Every step sleeps 15 ms, so that the requests are still streaming when the layers move.
        using var nodes = new NodeProcesses(3, _ => "shardpipe { devices = [ { device = cpu, budget = \"1GiB\" } ], compute-threads = 1, debug.step-delay = 15ms }", secure: true);
        string Logs() => string.Join("\n", Enumerable.Range(1, 3).Select(i => $"node-{i}:\n{nodes.Tail(i, 30)}"));
        await using var client = ShardPipeClient.Connect(ContactPoints.Parse(nodes.Contacts), nodes.ClientConfig);
        try { await client.WaitForNodesAsync(3, TimeSpan.FromSeconds(90)); }
        catch (ClusterException ex) { throw new Xunit.Sdk.XunitException($"{ex.Message}\n{Logs()}"); }
        var loaded = await client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(2));
        Assert.Contains(loaded.DeviceMap, e => e.Device == "node-3/cpu");
        Generate Request() => Requests.Generate(Prompt, null, 80) with { IgnoreEos = true };
        var expected = await client.RunAsync(Request(), loaded.Stages, TimeSpan.FromSeconds(60));

        // Four requests stream; once each has ten tokens, the move runs; each must end with the fault-free tokens.
        async Task<(LayersMoved Moved, RequestOutcome[] Outcomes)> WhileStreaming(StageInfo[] stages, Func<Task<LayersMoved>> move)
        {
            var tenth = Enumerable.Range(0, Streams).Select(_ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).ToArray();
            var runs = Enumerable.Range(0, Streams).Select(i =>
            {
                int seen = 0;
                return client.RunAsync(Request(), stages, TimeSpan.FromSeconds(30), _ => { if (Interlocked.Increment(ref seen) == 10) tenth[i].TrySetResult(); });
            }).ToArray();
            await Task.WhenAll(tenth.Select(t => t.Task)).WaitAsync(TimeSpan.FromSeconds(60));
            Assert.All(runs, r => Assert.False(r.IsCompleted)); // still streaming when the layers move
            var moved = await move();
            try { return (moved, await Task.WhenAll(runs).WaitAsync(TimeSpan.FromSeconds(120))); }
            catch (Exception ex) when (ex is TimeoutException or ClusterException)
            {
                // Which request, and the nodes' own account (a CI run once timed out here with nothing else to go on).
                var states = string.Join("; ", runs.Select((r, i) => $"request {i}: {(r.IsCompletedSuccessfully ? "done" : r.IsFaulted ? r.Exception!.InnerException!.Message : "still running")}"));
                throw new Xunit.Sdk.XunitException($"{ex.GetType().Name}: {ex.Message}\n{states}\n{Logs()}");
            }
        }
        async Task<ClusterStatus> Eventually(Func<ClusterStatus, bool> until, string what)
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(90);
            while (true)
            {
                try
                {
                    var s = await client.StatusAsync(TimeSpan.FromSeconds(5));
                    if (until(s)) return s;
                }
                catch (Akka.Actor.AskTimeoutException) { }
                if (DateTime.UtcNow > deadline) throw new Xunit.Sdk.XunitException($"{what} within 90 s\n{Logs()}");
                await Task.Delay(250);
            }
        }
        void NoRecoveryLogged()
        {
            foreach (int i in new[] { 1, 2, 3 })
                Assert.DoesNotContain("recover", string.Join("\n", nodes.Log(i)), StringComparison.OrdinalIgnoreCase);
        }

        // Drain node-3 (it holds the model's last layers and head) while four requests stream.
        var (drained, outcomes) = await WhileStreaming(loaded.Stages, () => client.DrainAsync("node-3", TimeSpan.FromMinutes(2)));
        Assert.All(outcomes, o => Assert.Equal(expected.NewTokens, o.NewTokens));
        Assert.Equal(["node-3"], drained.Leaving);
        Assert.True(drained.PlanEpoch > loaded.PlanEpoch);
        Assert.NotEmpty(drained.Moved);
        Assert.All(drained.Moved, m => Assert.NotEqual("node-3", m.Device.Split('/')[0]));
        Assert.Equal(0, nodes.WaitForExit(3, TimeSpan.FromSeconds(60))); // told to leave: the process ends by itself, exit 0
        var afterDrain = await Eventually(s => s.State == ClusterState.Ready && s.Nodes.Length == 2 && s.Drains is null, "node-3 did not leave");
        Assert.DoesNotContain(afterDrain.DeviceMap, e => e.Device.StartsWith("node-3/", StringComparison.Ordinal));
        Assert.Equal(drained.PlanEpoch, afterDrain.PlanEpoch); // its stopping started no recovery
        NoRecoveryLogged();

        // A typed refusal, through the CLI: a node that is not there (exit 2, one error line naming it).
        var unknown = ShardPipeProcess.Run("drain", "--cluster", nodes.Contacts, "--client-config", nodes.ClientConfigFile, "node-9");
        Assert.Equal(2, unknown.ExitCode);
        Assert.Contains("no node named 'node-9'", unknown.Stderr);

        // node-3 joins again, holding nothing; rebalance moves layers onto it while four requests stream.
        nodes.Start(3);
        var joined = await Eventually(s => s.State == ClusterState.Ready && s.Nodes.Length == 3 && s.Drains is null, "node-3 did not join again");
        var (rebalanced, outcomes2) = await WhileStreaming(joined.Stages, () => client.RebalanceAsync(TimeSpan.FromMinutes(2)));
        Assert.All(outcomes2, o => Assert.Equal(expected.NewTokens, o.NewTokens));
        Assert.Contains(rebalanced.Moved, m => m.Device == "node-3/cpu");
        Assert.Empty(rebalanced.Leaving);
        var after = await client.StatusAsync(TimeSpan.FromSeconds(10));
        Assert.Equal((ClusterState.Ready, rebalanced.PlanEpoch), (after.State, after.PlanEpoch));
        Assert.Contains(after.Stages, st => st.Device == "node-3/cpu");
        Assert.Equal(expected.NewTokens, (await client.RunAsync(Request(), after.Stages, TimeSpan.FromSeconds(60))).NewTokens);
        NoRecoveryLogged();
    }
}
