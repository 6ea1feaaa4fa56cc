using ShardPipe.Actors.Diagnostics;
using Akka.Cluster;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Workers;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;
using ShardPipe.Actors.Transport;

namespace ShardPipe.Tests.Actors;

/// <summary>Loading without local shards, and the failure paths: lost nodes, stalls, refused slices and nodes.</summary>
[Collection("cluster")]
public class ClusterFaultTests
{
    private static readonly string Model = TestPaths.Model("llama_untied");
    private static readonly long[][] Prompt = { new long[] { 5, 17, 42, 9, 3 } };

    private static float[] SingleProcessLastLogits()
    {
        var m = PreTrainedModel.FromPretrained(Model);
        using var scope = NewDisposeScope();
        return m.Forward(tensor(Prompt[0], new long[] { 1, Prompt[0].Length }), lastOnly: true)[0, 0].data<float>().ToArray();
    }

    [Fact]
    public async Task Nodes_without_local_shards_stream_their_slice_and_compute_the_same_logits()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB", localCheckpoints: i => i == 0);
        var loaded = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        Assert.Equal(3, loaded.Devices.Length);
        Assert.All(loaded.Devices, d => Assert.Equal(d.PlannedBytes, d.LoadedBytes));
        Assert.Equal(new[] { false, true, true }, loaded.Devices.OrderBy(d => d.Device).Select(d => d.Streamed));
        var outcome = await cluster.Client.RunAsync(Requests.Forward(Prompt, null, null), loaded.Stages, TimeSpan.FromSeconds(30));
        // The same bytes reached every stage: equal up to summation order (thread counts differ between the runs).
        ShardPipe.Tests.Modeling.ReferenceModelTests.AssertClose(SingleProcessLastLogits().Select(v => (double)v).ToArray(), outcome.LastLogits![0], 1e-5, "streamed slices");
    }

    [Fact]
    public async Task An_unreachable_bulk_channel_falls_back_to_actor_messages()
    {
        // node-1's listener binds 127.0.0.1 but offers 127.0.0.2, where nothing listens: node-2 cannot connect.
        await using var cluster = await EmbeddedCluster.StartAsync(2, "node-1/cpu=1GiB,node-2/cpu=1GiB", localCheckpoints: i => i == 0,
            extraConfig: i => i == 0 ? "shardpipe.bulk-transfer { public-hostname = \"127.0.0.2\", min-size = 1KiB }" : null);
        var loaded = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        Assert.Contains(loaded.Devices, d => d.Streamed);
        Assert.All(loaded.Devices, d => Assert.Equal(d.PlannedBytes, d.LoadedBytes));
        Assert.Equal(0, NodeDiagnostics.For(cluster.Nodes[1].System).BulkBytesReceived); // every byte came as actor messages
        var outcome = await cluster.Client.RunAsync(Requests.Forward(Prompt, null, null), loaded.Stages, TimeSpan.FromSeconds(30));
        ShardPipe.Tests.Modeling.ReferenceModelTests.AssertClose(SingleProcessLastLogits().Select(v => (double)v).ToArray(), outcome.LastLogits![0], 1e-5, "fallback");
    }

    [Fact]
    public async Task Budgets_that_force_a_three_way_split_are_honoured()
    {
        // llama_tied is 336 KB in three 101 KB blocks: no two 150 KB nodes can hold it.
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=150KB,node-2/cpu=150KB,node-3/cpu=150KB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_tied")), TimeSpan.FromMinutes(1));
        Assert.Equal(3, loaded.Devices.Length);
        Assert.All(loaded.Devices, d => Assert.True(d.LoadedBytes <= d.BudgetBytes, $"{d.Device}: {d.LoadedBytes} > {d.BudgetBytes}"));
        await using var tight = await EmbeddedCluster.StartAsync(2, "node-1/cpu=100KB,node-2/cpu=100KB");
        var ex = await Assert.ThrowsAsync<ClusterException>(() => tight.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1)));
        Assert.Contains("missing", ex.Message);
    }

    [Fact]
    public async Task A_node_lost_mid_load_fails_the_load_naming_it_and_survivors_can_load_again()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var materialising = new TaskCompletionSource();
        FaultHooks.For(cluster.Nodes[2].System).BeforeMaterialise = () => { materialising.TrySetResult(); Thread.Sleep(5000); };
        var load = cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        await materialising.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await cluster.Nodes[2].Kill();
        var ex = await Assert.ThrowsAsync<ClusterException>(() => load.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Contains("node-3", ex.Message);
        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
        Assert.NotEqual(ClusterState.Ready, status.State); // never a half-loaded model served
        var again = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        Assert.Equal(new[] { "node-1", "node-2" }, again.DeviceMap.Select(e => e.Device.Split('/')[0]).Distinct().Order());
        var outcome = await cluster.Client.RunAsync(Requests.Forward(Prompt, null, null), again.Stages, TimeSpan.FromSeconds(30));
        ShardPipe.Tests.Modeling.ReferenceModelTests.AssertClose(SingleProcessLastLogits().Select(v => (double)v).ToArray(), outcome.LastLogits![0], 1e-5, "reloaded on survivors");
    }

    [Fact]
    public async Task A_caller_that_crashes_cancels_its_request_on_every_stage()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(2, "node-1/cpu=1GiB,node-2/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        int steps = 0;
        FaultHooks.For(cluster.Nodes[1].System).BeforeStep = () => { Interlocked.Increment(ref steps); Thread.Sleep(100); };
        // The caller is another process (the CLI as a cluster client), killed with SIGKILL mid-generation: no goodbye,
        // no actor stopped — the coordinator learns only from its failure detector that the caller is gone.
        string contacts = string.Join(",", cluster.Nodes.Select(n => $"127.0.0.1:{n.Address.Port}"));
        using var caller = ShardPipeProcess.Start("generate", "--cluster", contacts, "--model", Model, "--input-ids", "5,17,42", "--max-new-tokens", "250", "--ignore-eos"); // 3 + 250 ≤ the 256 positions
        await Eventually.True(() => Volatile.Read(ref steps) >= 5, TimeSpan.FromSeconds(60), "the crashing caller's request runs");
        caller.Kill();
        await caller.WaitForExitAsync();
        await Eventually.True(async () => (await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5))).InFlight == 0, TimeSpan.FromSeconds(30), "the request cancelled");
        int at = Volatile.Read(ref steps);
        Assert.True(at < 500, $"{at} steps ran: the request was not cancelled promptly");

        // No stage computes for it any more: once a first short request has run (a step of it already under way has
        // finished by then), a request of 3 tokens takes exactly its own 3 steps, each with its one row.
        var diagnostics = NodeDiagnostics.For(cluster.Nodes[1].System);
        var probe = Requests.Generate(Prompt, null, 3) with { IgnoreEos = true };
        await cluster.Client.RunAsync(probe, loaded.Stages, TimeSpan.FromSeconds(30));
        at = Volatile.Read(ref steps);
        diagnostics.StepRows.Drain();
        await cluster.Client.RunAsync(probe with { RequestId = Guid.NewGuid().ToString("N") }, loaded.Stages, TimeSpan.FromSeconds(30));
        Assert.Equal(3, Volatile.Read(ref steps) - at);
        Assert.All(diagnostics.StepRows.Drain(), rows => Assert.Equal(1, rows));
    }

    [Fact]
    public async Task A_stalled_stage_ends_the_request_with_a_typed_error_within_the_timeout()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(2, "node-1/cpu=1GiB,node-2/cpu=1GiB");
        FaultHooks.For(cluster.Nodes[1].System).BeforeStep = () => Thread.Sleep(4000);
        var loaded = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        var ex = await Assert.ThrowsAsync<ClusterException>(() =>
            cluster.Client.RunAsync(Requests.Generate(Prompt, null, 3), loaded.Stages, TimeSpan.FromSeconds(1)).WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.Contains("no progress", ex.Message);
        Assert.Contains("node-2/cpu", ex.Message);
    }

    [Fact]
    public async Task A_full_queue_refuses_new_requests_and_queued_ones_still_complete()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(2, "node-1/cpu=1GiB,node-2/cpu=1GiB",
            extraConfig: i => i == 0 ? "shardpipe.max-in-flight = 1\nshardpipe.max-queued = 1" : null);
        var loaded = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        using var gate = new ManualResetEventSlim();
        FaultHooks.For(cluster.Nodes[1].System).BeforeStep = () => gate.Wait(TimeSpan.FromSeconds(30)); // node-2 holds every step until released
        async Task Until(Func<ShardPipe.Messages.ClusterStatus, bool> condition, string what) =>
            await Eventually.True(async () => condition(await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5))), TimeSpan.FromSeconds(20), what);
        var first = cluster.Client.RunAsync(Requests.Generate(Prompt, null, 5), loaded.Stages, TimeSpan.FromSeconds(30));
        await Until(s => s.InFlight == 1, "the first request in flight");
        var second = cluster.Client.RunAsync(Requests.Generate(Prompt, null, 5), loaded.Stages, TimeSpan.FromSeconds(30));
        await Until(s => s.Queued == 1, "the second request queued");
        var third = cluster.Client.RunAsync(Requests.Generate(Prompt, null, 5), loaded.Stages, TimeSpan.FromSeconds(30));
        var refused = await Assert.ThrowsAsync<ClusterException>(() => third.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Contains("busy", refused.Message);
        gate.Set();
        Assert.Equal(5, (await first.WaitAsync(TimeSpan.FromSeconds(30))).Steps);
        Assert.Equal(5, (await second.WaitAsync(TimeSpan.FromSeconds(30))).Steps); // queued, then served
        Assert.Equal(5, (await cluster.Client.RunAsync(Requests.Generate(Prompt, null, 5), loaded.Stages, TimeSpan.FromSeconds(30))).Steps);
        await Until(s => s.InFlight == 0 && s.Queued == 0, "every slot freed"); // the head stage told the coordinator each request ended
    }

    [Fact]
    public async Task A_worker_refuses_a_slice_over_its_budget_before_reading()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=100KB");
        var ex = await Assert.ThrowsAsync<ClusterException>(() =>
            cluster.Client.LoadAsync(Requests.Load(Model, maxMemory: "node-1/cpu=10MB"), TimeSpan.FromMinutes(1)));
        Assert.Contains("exceeds its budget", ex.Message);
        Assert.Contains("node-1/cpu", ex.Message);
    }

    [Theory]
    [InlineData("akka.remote.dot-netty.tcp.maximum-frame-size = 300000b")]
    [InlineData("shardpipe.debug.protocol-version = 99")]
    public async Task A_node_with_a_different_frame_size_or_protocol_version_is_refused_at_the_handshake(string oddity)
    {
        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=1GiB");
        var odd = ShardPipeNode.Start(ShardPipeNode.LoopbackConfig("odd", new[] { "worker" }, new[] { ("cpu", 1L << 30) }, extra: oddity),
            cluster.Nodes[0].Address.ToString());
        try
        {
            // The newer node is downed, and leaves: its actor system shuts down; the cluster stays as it was.
            await odd.System.WhenTerminated.WaitAsync(TimeSpan.FromSeconds(30));
            var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
            Assert.Equal(new[] { "node-1" }, status.Nodes);
            Assert.Equal(MemberStatus.Up, Akka.Cluster.Cluster.Get(cluster.Nodes[0].System).SelfMember.Status);
        }
        finally
        {
            await odd.Kill();
            odd.ReleasePort();
        }
    }

    [Fact]
    public async Task Requests_without_a_model_or_with_bad_ids_get_typed_errors()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=1GiB");
        var noModel = await Assert.ThrowsAsync<ClusterException>(() =>
            cluster.Client.RunAsync(Requests.Generate(Prompt, null, 2), Array.Empty<StageInfo>(), TimeSpan.FromSeconds(10)));
        Assert.True(noModel.Message.Contains("no model is loaded"), noModel.Message);
        var loaded = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        // A request that can never run as given is invalid input (exit 2 / HTTP 400), not a cluster fault to retry.
        var bad = await Assert.ThrowsAsync<InvalidInputException>(() =>
            cluster.Client.RunAsync(Requests.Generate(new[] { new long[] { 1, 99999 } }, null, 2), loaded.Stages, TimeSpan.FromSeconds(10)));
        Assert.Contains("outside the vocabulary", bad.Message);
        var tooLong = await Assert.ThrowsAsync<InvalidInputException>(() =>
            cluster.Client.RunAsync(Requests.Generate(Prompt, null, 1000), loaded.Stages, TimeSpan.FromSeconds(10)));
        Assert.Contains("the model takes at most 256 positions", tooLong.Message);
    }
}

/// <summary>Messages larger than a frame: streamed weights and chunked activations and logits.</summary>
[Collection("cluster")]
public class LargeMessageTests
{
    [Theory]
    [InlineData(true)]  // weights over the bulk socket channel
    [InlineData(false)] // weights as chunked actor messages
    public async Task Tensors_and_activations_larger_than_the_frame_size_cross_intact(bool bulk)
    {
        using var tmp = new TempDir();
        // Embedding 17000 x 512 fp32 = 35 MB (a streamed tensor ~140 frames long); a 48-token hidden state of 98 KB
        // and a 68 KB logits row both exceed the 64 KiB chunk size.
        ShardPipe.Checkpoints.Synthetic.SyntheticLlama.Write(tmp.Path, new ShardPipe.Checkpoints.Synthetic.SyntheticLlamaSpec
        {
            HiddenSize = 512, IntermediateSize = 64, NumLayers = 2, NumHeads = 8, NumKeyValueHeads = 8, VocabSize = 17000, MaxShardSize = "20MB",
        });
        var ids = new[] { Enumerable.Range(2, 48).Select(i => (long)(i * 37 % 16000 + 2)).ToArray() };
        var local = PreTrainedModel.FromPretrained(tmp.Path);
        float[] expected;
        using (var scope = NewDisposeScope())
            expected = local.Forward(tensor(ids[0], new long[] { 1, 48 }), lastOnly: true)[0, 0].data<float>().ToArray();
        local.Release();

        await using var cluster = await EmbeddedCluster.StartAsync(2, "node-1/cpu=1GiB,node-2/cpu=1GiB", localCheckpoints: i => i == 0,
            extraConfig: _ => $"shardpipe.bulk-transfer.enabled = {(bulk ? "on" : "off")}");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(tmp.Path), TimeSpan.FromMinutes(2));
        Assert.Contains(loaded.Devices, d => d.Streamed && d.LoadedBytes > 30_000_000);
        long overBulk = NodeDiagnostics.For(cluster.Nodes[1].System).BulkBytesReceived;
        if (bulk) Assert.True(overBulk >= 30_000_000, "the embedding did not come over the bulk channel");
        else Assert.Equal(0, overBulk);
        var outcome = await cluster.Client.RunAsync(Requests.Forward(ids, null, null), loaded.Stages, TimeSpan.FromSeconds(60));
        ShardPipe.Tests.Modeling.ReferenceModelTests.AssertClose(expected.Select(v => (double)v).ToArray(), outcome.LastLogits![0], 1e-5, "large messages");
        var gen = await cluster.Client.RunAsync(Requests.Generate(ids, null, 3), loaded.Stages, TimeSpan.FromSeconds(60));
        Assert.Equal(3, gen.Steps);
    }
}
