using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Actors.Client;
using ShardPipe.Messages;

namespace ShardPipe.Host.Bench;

/// <summary>
/// The live-move part of <c>bench recovery</c>: the killed node comes back (a join) and <c>rebalance</c> moves layers
/// onto it while a generation runs, then that node is drained while another runs. Each figure is the time from the
/// command to its answer (the new epoch serving), with whether the request kept its fault-free tokens.
/// </summary>
public static class MoveBench
{
    /// <param name="node">The node that rejoins and is then drained (not the coordinator's: the youngest node).</param>
    public static async Task<(JsonObject Figures, bool Equal)> Run(NodeProcesses nodes, ShardPipeClient client, int node, int tokens,
        long[][] expected, Func<Generate> request, bool asJson, ILogger log)
    {
        nodes.Start(node);
        var status = await Joined(client, nodes.Count);
        var (rebalance, rebalanceSeconds, rebalanceEqual) = await WhileGenerating(client, status.Stages, tokens, expected, request,
            () => client.RebalanceAsync(TimeSpan.FromMinutes(10)));
        BenchSupport.Say(asJson, $"  node-{node} joined; rebalance during a generation: epoch {rebalance.PlanEpoch} served {rebalanceSeconds:0.00} s after the command, " +
                                 $"{rebalance.Moved.Length} module(s) moved, tokens {(rebalanceEqual ? "equal" : "DIFFERENT")}");
        status = await client.StatusAsync(TimeSpan.FromSeconds(30));
        var (drain, drainSeconds, drainEqual) = await WhileGenerating(client, status.Stages, tokens, expected, request,
            () => client.DrainAsync($"node-{node}", TimeSpan.FromMinutes(10)));
        int? exit = nodes.WaitForExit(node, TimeSpan.FromSeconds(60));
        log.LogInformation("drained node-{Node} exited with {Exit}", node, exit?.ToString() ?? "(still running)");
        BenchSupport.Say(asJson, $"  node-{node} drained during a generation: epoch {drain.PlanEpoch} served {drainSeconds:0.00} s after the command, " +
                                 $"{drain.Moved.Length} module(s) moved, tokens {(drainEqual ? "equal" : "DIFFERENT")}, process exit {exit?.ToString() ?? "none"}");
        return (new JsonObject
        {
            ["rebalance_s"] = Math.Round(rebalanceSeconds, 3),
            ["rebalance_moved_modules"] = rebalance.Moved.Length,
            ["rebalance_tokens_equal"] = rebalanceEqual,
            ["drain_s"] = Math.Round(drainSeconds, 3),
            ["drain_moved_modules"] = drain.Moved.Length,
            ["drain_tokens_equal"] = drainEqual,
            ["drained_exit_code"] = exit,
        }, rebalanceEqual && drainEqual && exit == 0);
    }

    /// <summary>Every node registered and the model served (the rejoined node holds nothing yet).</summary>
    private static async Task<ClusterStatus> Joined(ShardPipeClient client, int count)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(2);
        while (true)
        {
            var s = await client.WaitForNodesAsync(count, TimeSpan.FromMinutes(2));
            if (s.State == ClusterState.Ready && s.Drains is null) return s;
            if (DateTime.UtcNow > deadline) throw new ClusterException($"the cluster was not ready with {count} nodes within 2 minutes (state {s.StateName})");
            await Task.Delay(250);
        }
    }

    /// <summary>Runs a generation, asks for the move once a third of its tokens arrived, and times the move.</summary>
    private static async Task<(LayersMoved Moved, double Seconds, bool Equal)> WhileGenerating(ShardPipeClient client, StageInfo[] stages, int tokens,
        long[][] expected, Func<Generate> request, Func<Task<LayersMoved>> move)
    {
        int seen = 0;
        var third = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = client.RunAsync(request(), stages, TimeSpan.FromSeconds(120), _ => { if (Interlocked.Increment(ref seen) == tokens / 3) third.TrySetResult(); });
        await third.Task.WaitAsync(TimeSpan.FromMinutes(2));
        var clock = Stopwatch.StartNew();
        var moved = await move();
        double seconds = clock.Elapsed.TotalSeconds;
        var outcome = await run;
        return (moved, seconds, expected.Zip(outcome.NewTokens).All(p => p.First.SequenceEqual(p.Second)));
    }
}
