using Akka.Configuration;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Workers;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;
using ShardPipe.Actors.Settings;

namespace ShardPipe.Tests.Actors;

/// <summary><c>shardpipe.compute-cores</c>: the setting, the pinning itself, and a cluster whose steps run pinned.</summary>
[Collection("cluster")]
public class ComputeCoresTests
{
    /// <summary>The cores the calling thread may run on, as the kernel reports them.</summary>
    private static string AllowedCores() =>
        File.ReadLines("/proc/thread-self/status").Single(l => l.StartsWith("Cpus_allowed_list:", StringComparison.Ordinal)).Split(':')[1].Trim();

    private static T OnFreshThread<T>(Func<T> f)
    {
        T result = default!;
        var t = new Thread(() => result = f());
        t.Start();
        t.Join();
        return result;
    }

    [Fact]
    public void The_setting_is_read_from_the_host_config()
    {
        var config = ConfigurationFactory.ParseString("shardpipe.compute-cores = [0, 1]").WithFallback(ShardPipeNode.Reference);
        Assert.Equal(new[] { 0, 1 }, NodeSettings.From(config).ComputeCores);
        Assert.Empty(NodeSettings.From(ShardPipeNode.Reference).ComputeCores);
    }

    [Fact]
    public void A_thread_is_pinned_to_the_named_cores_and_an_impossible_set_is_refused_with_the_reason()
    {
        if (!OperatingSystem.IsLinux())
        {
            // Elsewhere pinning is refused with the reason (the node logs it and runs unpinned): that is what is checked there.
            var (pinned, why, _) = OnFreshThread(() => (CpuAffinity.TryPinCurrentThread(new[] { 0 }, out var e), e, ""));
            Assert.False(pinned);
            Assert.Contains("Linux only", why);
            return;
        }
        var (ok, error, allowed) = OnFreshThread(() => (CpuAffinity.TryPinCurrentThread(new[] { 0 }, out var e), e, AllowedCores()));
        Assert.True(ok, error);
        Assert.Equal("0", allowed);

        int beyond = Environment.ProcessorCount + 64; // a core this machine does not have
        var (ok2, error2, allowed2) = OnFreshThread(() => (CpuAffinity.TryPinCurrentThread(new[] { beyond }, out var e), e, AllowedCores()));
        Assert.False(ok2);
        Assert.Contains("sched_setaffinity", error2);
        Assert.NotEqual("0", allowed2); // a refused set leaves the thread as it was
    }

    [Theory]
    [InlineData("[0]")]
    [InlineData("[4000]")] // no such core: each node logs it and runs unpinned
    public async Task A_cluster_with_pinned_steps_generates_what_one_process_does(string cores)
    {
        var model = TestPaths.Model("llama_untied");
        var prompt = new[] { new long[] { 5, 17, 42, 9, 3 } };
        var m = PreTrainedModel.FromPretrained(model);
        var expected = TokenGenerator.Greedy(m, prompt, null, new GenerationOptions { MaxNewTokens = 8, IgnoreEos = true }).Sequences[0][5..];
        m.Release();
        await using var cluster = await EmbeddedCluster.StartAsync(2, "node-1/cpu=1GiB,node-2/cpu=1GiB", extraConfig: _ => $"shardpipe.compute-cores = {cores}");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(model), TimeSpan.FromMinutes(1));
        for (int r = 0; r < 2; r++) // the second request runs over the activation link, on its (pinned) reader thread
        {
            var outcome = await cluster.Client.RunAsync(new Generate(Guid.NewGuid().ToString("N"), prompt, null, 8, true, new SamplingSettings(true, 0, 0, 1, 0)),
                loaded.Stages, TimeSpan.FromSeconds(30));
            Assert.Equal(expected, outcome.NewTokens[0]);
        }
    }
}
