using System.Text.Json.Nodes;
using ShardPipe.Actors.Hosting;
using ShardPipe.Tests.Checkpoints;
using ShardPipe.Tests.Modeling;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Nodes whose memory cannot hold their share: the planner puts blocks on each node's disk device (after its
/// memory), those workers run them with weights read from disk, and every reference model still gives Hugging
/// Face's logits and greedy tokens.
/// </summary>
[Collection("cluster")]
public class ClusterOffloadTests : IAsyncLifetime
{
    // Budgets as registered; each load narrows the memory ones with max_memory (below).
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
    public async Task Every_reference_model_runs_with_blocks_on_node_disks_and_matches_hugging_face()
    {
        foreach (var name in TestPaths.ModelNames)
        {
            var r = new ReferenceData(name);
            // Memory for the embeddings and the head (and norms), not for a decoder block: every node's blocks go to its disk.
            var meta = ShardPipe.Modeling.Models.AutoModel.FromConfig(ShardPipe.Checkpoints.PretrainedConfig.FromFolder(r.Folder));
            var layers = Enumerable.Range(0, meta.NumLayers).Select(meta.LayerPath).ToList();
            long outside = meta.NamedParameters().Where(p => !layers.Any(l => ShardPipe.Placement.ModulePath.Covers(l, p.Key))).Sum(p => p.Slot.ElementCount * 4);
            long memory = outside * 105 / 100;
            string maxMemory = string.Join(",", Enumerable.Range(1, 3).Select(i => $"node-{i}/cpu={memory}"));
            var loaded = await _cluster.Client.LoadAsync(Requests.Load(r.Folder, r.Variant, maxMemory: maxMemory), TimeSpan.FromMinutes(2));
            var onDisk = loaded.DeviceMap.Where(e => e.Device.EndsWith("/disk", StringComparison.Ordinal)).ToList();
            Assert.True(onDisk.Count > 0, $"{name}: nothing was planned onto a disk device");
            Assert.Contains(loaded.Devices, d => d.Device.EndsWith("/disk", StringComparison.Ordinal) && d.LoadedBytes == d.PlannedBytes && d.LoadedBytes > 0);
            await ReferenceOnCluster.Check(_cluster.Client, loaded, r, "with blocks on node disks");
        }
        var status = await _cluster.Client.StatusAsync(TimeSpan.FromSeconds(10));
        Assert.Contains(status.DeviceMap, e => e.Device.EndsWith("/disk", StringComparison.Ordinal));
    }
}
