using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;

namespace ShardPipe.Tests.Support;

/// <summary>
/// The crash check every speculation method shares: a greedy and a sampled speculative request run on an embedded
/// 3-node cluster, node-2 (a middle stage) is killed once both have seen a few tokens, and each must resume to exactly
/// its fault-free tokens with one recovered fault (the resumed request carries only accepted tokens).
/// </summary>
public static class SpeculativeCrash
{
    public static async Task ResumesWithFaultFreeTokens(EmbeddedCluster cluster, StageInfo[] stages,
        Generate greedy, long[][] greedyTokens, Generate sampled, long[][] sampledTokens)
    {
        FaultHooks.For(cluster.Nodes[2].System).BeforeStep = () => Thread.Sleep(30); // keep the generation going past the kill
        var greedyRun = Run(cluster, greedy, stages, out var greedyReached);
        var sampledRun = Run(cluster, sampled, stages, out var sampledReached);
        await Task.WhenAll(greedyReached, sampledReached).WaitAsync(TimeSpan.FromSeconds(30));
        await cluster.Nodes[1].Kill(); // node-2: a middle stage
        var greedyAfter = await greedyRun.WaitAsync(TimeSpan.FromSeconds(90));
        var sampledAfter = await sampledRun.WaitAsync(TimeSpan.FromSeconds(90));
        Assert.Equal(greedyTokens, greedyAfter.NewTokens);
        Assert.Equal(sampledTokens, sampledAfter.NewTokens);
        Assert.Equal(1, greedyAfter.RecoveredFaults);
        Assert.Equal(1, sampledAfter.RecoveredFaults);
    }

    private static Task<ShardPipe.Actors.Client.RequestOutcome> Run(EmbeddedCluster cluster, Generate request, StageInfo[] stages, out Task reached)
    {
        int seen = 0;
        var at = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        reached = at.Task;
        return cluster.Client.RunAsync(request, stages, TimeSpan.FromSeconds(30), _ => { if (Interlocked.Increment(ref seen) >= 6) at.TrySetResult(); });
    }
}
