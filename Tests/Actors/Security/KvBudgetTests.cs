using ShardPipe.Actors.Coordination;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors.Security;

/// <summary>
/// A stage's KV-cache bytes are bounded: admission reserves each request's worst case (rows × (prompt + max new
/// tokens) × bytes per token on the device's layers), queues what does not fit yet, refuses what could never fit,
/// and /status shows budget and reservations.
/// </summary>
[Collection("cluster")]
public sealed class KvBudgetTests
{
    private static readonly IReadOnlyDictionary<string, long> Budget = new Dictionary<string, long> { ["a"] = 1000, ["b"] = 400 };

    [Fact]
    public void Admission_reserves_worst_cases_queues_what_does_not_fit_and_refuses_what_never_can()
    {
        var q = new AdmissionQueue<string, string>(maxInFlight: 8, maxQueued: 4);
        q.SetKvBudgets(Budget);
        var now = DateTime.UtcNow;
        Dictionary<string, long> Need(long a, long b) => new() { ["a"] = a, ["b"] = b };
        Assert.Equal(Admission.Start, q.Admit("r1", "r1", "c", ClusterState.Ready, now, Need(600, 200)));
        Assert.Equal((600, 200), (q.Reserved("a"), q.Reserved("b")));
        Assert.Equal(Admission.Queue, q.Admit("r2", "r2", "c", ClusterState.Ready, now, Need(500, 100)));   // a: 1100 > 1000
        Assert.Equal(Admission.Queue, q.Admit("r3", "r3", "c", ClusterState.Ready, now, Need(10, 10)));     // fits, but does not overtake r2
        Assert.Equal(Admission.NeverFits, q.Admit("r4", "r4", "c", ClusterState.Ready, now, Need(100, 401)));
        Assert.Contains("needs 401 bytes on b", q.NeverFitsReason(Need(100, 401)));
        var (_, next) = q.Finish("r1", ClusterState.Ready, now);
        Assert.Equal(new[] { "r2", "r3" }, next.Select(n => n.Id));
        Assert.Equal((510, 110), (q.Reserved("a"), q.Reserved("b")));
        q.Finish("r2", ClusterState.Ready, now);
        q.Finish("r3", ClusterState.Ready, now);
        Assert.Equal((0, 0), (q.Reserved("a"), q.Reserved("b")));
        // Without budgets, nothing is reserved against.
        var free = new AdmissionQueue<string, string>(1, 0);
        Assert.Equal(Admission.Start, free.Admit("x", "x", "c", ClusterState.Ready, now, Need(1L << 40, 1L << 40)));
    }

    [Fact]
    public void Kv_bytes_per_token_follow_the_config()
    {
        var llama = ShardPipe.Checkpoints.PretrainedConfig.FromFolder(TestPaths.Model("llama_untied")); // 2 KV heads × 16 dims
        Assert.Equal(2 * 2 * 16 * 4, SlicePlanner.KvBytesPerTokenPerLayer(llama, 4));
        var gpt2 = ShardPipe.Checkpoints.PretrainedConfig.FromFolder(TestPaths.Model("gpt2"));
        long heads = gpt2.GetLongOrNull("n_head")!.Value, hidden = gpt2.GetLongOrNull("n_embd")!.Value;
        Assert.Equal(2 * heads * (hidden / heads) * 2, SlicePlanner.KvBytesPerTokenPerLayer(gpt2, 2));
    }

    [Fact]
    public async Task A_stage_holds_at_most_its_kv_budget_of_worst_cases_and_a_request_that_never_fits_is_refused()
    {
        // llama_untied: 2 layers × 256 bytes a token (fp32) = 512 bytes a token on the one device; 16 KiB = 32 positions.
        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=1GiB",
            extraConfig: _ => "shardpipe.kv-cache-budget = 16KiB\nshardpipe.debug.step-delay = 30ms");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(1));
        var device = Assert.Single(loaded.Devices);
        Assert.Equal((512L, 16384L), (device.KvBytesPerToken, device.KvBudgetBytes));
        long[][] prompt = { new long[] { 5, 17, 42, 9, 3 } };
        Generate Request(int maxNew) => Requests.Generate(prompt, null, maxNew) with { IgnoreEos = true };
        var alone = await cluster.Client.RunAsync(Request(12), loaded.Stages, TimeSpan.FromSeconds(60));

        // Two requests of 17 positions (8,704 bytes each): the second waits for the first.
        int steps = 0;
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var first = cluster.Client.RunAsync(Request(12), loaded.Stages, TimeSpan.FromSeconds(60), _ => { if (Interlocked.Increment(ref steps) == 2) started.TrySetResult(); });
        await started.Task.WaitAsync(TimeSpan.FromSeconds(30));
        var second = cluster.Client.RunAsync(Request(12), loaded.Stages, TimeSpan.FromSeconds(60));
        var status = await Eventually(async () =>
        {
            var s = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
            return s.Queued == 1 ? s : null;
        });
        Assert.Equal((1, 17 * 512L), (status.InFlight, Assert.Single(status.Devices).KvReservedBytes));
        Assert.Equal(alone.NewTokens, (await first).NewTokens);
        Assert.Equal(alone.NewTokens, (await second).NewTokens);

        // 5 + 40 positions need 23,040 bytes: more than the budget, ever. Refused at once, naming it.
        var never = await Assert.ThrowsAsync<InvalidInputException>(() => cluster.Client.RunAsync(Request(40), loaded.Stages, TimeSpan.FromSeconds(30)));
        Assert.Contains("can never run here", never.Message);
        Assert.Contains("KV budget is 16384 bytes", never.Message);
        Assert.Equal(0, Assert.Single((await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5))).Devices).KvReservedBytes);
    }

    private static async Task<T> Eventually<T>(Func<Task<T?>> probe) where T : class
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            if (await probe() is { } value) return value;
            if (DateTime.UtcNow > until) throw new Xunit.Sdk.XunitException("the condition did not hold within 30 s");
            await Task.Delay(50);
        }
    }
}
