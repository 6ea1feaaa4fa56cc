using ShardPipe.Actors.Hosting;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors.Coordination;

/// <summary>
/// A request that runs far longer than 10 × request-timeout keeps its admission slot until it ends (slots used to be
/// swept by age, freeing a running request's slot and letting a second one in past max-in-flight).
/// </summary>
[Collection("cluster")]
public sealed class LongRunTests
{
    [Fact]
    public async Task A_run_longer_than_ten_request_timeouts_keeps_its_slot_and_ends_with_its_tokens()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=1GiB", extraConfig: _ =>
            "shardpipe { request-timeout = 1s, max-in-flight = 1, max-queued = 0, debug.step-delay = 90ms }");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(1));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        int steps = 0;
        var late = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = cluster.Client.RunAsync(Requests.Generate(new[] { new long[] { 5, 17, 42 } }, null, 250) with { IgnoreEos = true },
            loaded.Stages, TimeSpan.FromSeconds(120), _ => { if (Interlocked.Increment(ref steps) == 240) late.TrySetResult(); });
        await late.Task.WaitAsync(TimeSpan.FromSeconds(100));
        Assert.True(clock.Elapsed > TimeSpan.FromSeconds(20), $"the run took only {clock.Elapsed.TotalSeconds:0.0} s so far (more than 10 × 1 s is the point)");
        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(1, status.InFlight);
        // The slot is still taken: a second request is refused as busy (no queue), not let in beside it.
        var busy = await Assert.ThrowsAsync<ClusterException>(() => cluster.Client.RunAsync(
            Requests.Generate(new[] { new long[] { 5 } }, null, 2), loaded.Stages, TimeSpan.FromSeconds(30)));
        Assert.Contains("busy", busy.Message);
        var outcome = await run;
        Assert.Equal(250, outcome.NewTokens[0].Length);
        Assert.Equal(0, (await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5))).InFlight);
    }
}
