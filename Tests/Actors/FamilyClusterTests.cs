using ShardPipe.Actors.Hosting;
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
