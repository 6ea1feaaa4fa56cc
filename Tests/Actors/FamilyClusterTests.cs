using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Tests.Modeling;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Mixtral, Gemma and Phi split over a real 3-node cluster (balanced over all three nodes), and with their blocks on
/// the nodes' disks: forward logits (1e-4) and greedy tokens equal Hugging Face's.
/// </summary>
[Collection("cluster")]
public class FamilyClusterTests : IClassFixture<ThreeNodeCluster>
{
    private readonly ThreeNodeCluster _fixture;

    public FamilyClusterTests(ThreeNodeCluster fixture) => _fixture = fixture;

    [Theory]
    [MemberData(nameof(FamilyReferenceTests.Families), MemberType = typeof(FamilyReferenceTests))]
    public async Task A_family_split_over_three_nodes_matches_hugging_face(string name)
    {
        var r = ReferenceData.Family(name);
        var client = _fixture.Cluster.Client;
        var loaded = await client.LoadAsync(Requests.Load(r.Folder, r.Variant), TimeSpan.FromMinutes(2));
        Assert.Equal(new[] { "node-1", "node-2", "node-3" }, loaded.DeviceMap.Select(e => e.Device.Split('/')[0]).Distinct().Order());
        Assert.All(loaded.Devices, d => Assert.Equal(d.PlannedBytes, d.LoadedBytes));
        await ReferenceOnCluster.Check(client, loaded, r, "on 3 nodes");
    }
}

/// <summary>Each node's decoder blocks on its disk device: every family still gives Hugging Face's logits and tokens.</summary>
[Collection("cluster")]
public class FamilyClusterOffloadTests : IAsyncLifetime
{
    private const string Nodes = "node-1/cpu=150KB,node-1/disk=1GB,node-2/cpu=150KB,node-2/disk=1GB,node-3/cpu=150KB,node-3/disk=1GB";
    private readonly TempDir _offload = new();
    private EmbeddedCluster _cluster = null!;

    public async Task InitializeAsync() => _cluster = await EmbeddedCluster.StartAsync(3, Nodes, offloadFolder: _offload.Path);

    public async Task DisposeAsync()
    {
        await _cluster.DisposeAsync();
        _offload.Dispose();
    }

    [Fact]
    public async Task Every_family_runs_with_blocks_on_node_disks_and_matches_hugging_face()
    {
        foreach (var name in TestPaths.FamilyNames)
        {
            var r = ReferenceData.Family(name);
            // Memory for the embeddings, norms and head, not for a decoder block: the blocks go to the nodes' disks.
            var meta = ShardPipe.Modeling.Models.AutoModel.FromConfig(ShardPipe.Checkpoints.PretrainedConfig.FromFolder(r.Folder));
            var layers = Enumerable.Range(0, meta.NumLayers).Select(meta.LayerPath).ToList();
            long outside = meta.NamedParameters().Where(p => !layers.Any(l => ShardPipe.Placement.ModulePath.Covers(l, p.Key))).Sum(p => p.Slot.ElementCount * 4);
            long memory = outside * 105 / 100;
            string maxMemory = string.Join(",", Enumerable.Range(1, 3).Select(i => $"node-{i}/cpu={memory}"));
            var loaded = await _cluster.Client.LoadAsync(Requests.Load(r.Folder, r.Variant, maxMemory: maxMemory), TimeSpan.FromMinutes(2));
            Assert.True(loaded.DeviceMap.Count(e => e.Device.EndsWith("/disk", StringComparison.Ordinal)) > 0, $"{name}: nothing was planned onto a disk device");
            Assert.Contains(loaded.Devices, d => d.Device.EndsWith("/disk", StringComparison.Ordinal) && d.LoadedBytes == d.PlannedBytes && d.LoadedBytes > 0);
            await ReferenceOnCluster.Check(_cluster.Client, loaded, r, "with blocks on node disks");
        }
    }
}

/// <summary>
/// Each family served as the others are: 8 requests merged at every stage of a 3-node cluster (continuous batching), a
/// middle worker crashing mid-way; every request ends with the tokens it gets alone, fault-free.
/// </summary>
[Collection("cluster")]
public class FamilyClusterRecoveryTests
{
    [Theory]
    [InlineData("mixtral")]
    [InlineData("gemma")]
    [InlineData("phi")]
    public async Task Merged_requests_survive_a_worker_crash_each_with_its_tokens_run_alone(string name)
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(ReferenceData.Family(name).Folder), TimeSpan.FromMinutes(1));
        Assert.Contains(loaded.DeviceMap, e => e.Device.StartsWith("node-2/", StringComparison.Ordinal));
        var requests = Enumerable.Range(0, 8).Select(i => Requests.Generate(new[] { Enumerable.Range(0, 3 + i * 4).Select(j => (long)((j * 13 + i * 29 + 3) % 250 + 2)).ToArray() }, null, 24 + i * 2)
            with { IgnoreEos = true, Sampling = i == 3 ? new SamplingSettings(false, 0.9, 20, 0.95, 77) : new SamplingSettings(true, 0, 0, 1, 0) }).ToList();
        var expected = new List<long[][]>();
        foreach (var r in requests) expected.Add((await cluster.Client.RunAsync(r with { RequestId = Guid.NewGuid().ToString("N") }, loaded.Stages, TimeSpan.FromSeconds(30))).NewTokens);
        foreach (var node in cluster.Nodes) ShardPipe.Actors.Diagnostics.NodeDiagnostics.For(node.System).StepRows.Drain();
        ShardPipe.Actors.Diagnostics.FaultHooks.For(cluster.Nodes[2].System).BeforeStep = () => Thread.Sleep(20); // keep the generations going past the kill

        int seen = 0;
        var reached = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var runs = requests.Select(r => cluster.Client.RunAsync(r, loaded.Stages, TimeSpan.FromSeconds(30),
            _ => { if (Interlocked.Increment(ref seen) == 40) reached.TrySetResult(); })).ToList();
        await reached.Task.WaitAsync(TimeSpan.FromSeconds(30));
        var rows = cluster.Nodes.SelectMany(n => ShardPipe.Actors.Diagnostics.NodeDiagnostics.For(n.System).StepRows.Drain()).ToList();
        Assert.True(rows.Max() >= 4, $"the stages merged the requests' steps: at most {rows.Max()} rows in a step");
        await cluster.Nodes[1].Kill(); // node-2: a middle stage
        var outcomes = await Task.WhenAll(runs).WaitAsync(TimeSpan.FromSeconds(120));
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(expected[i][0], outcomes[i].NewTokens[0]);
            Assert.Equal(1, outcomes[i].RecoveredFaults);
        }
    }
}
