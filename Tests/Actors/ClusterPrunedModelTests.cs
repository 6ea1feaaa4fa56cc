using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// The pruned GPT-2 (per-layer attention widths from config.pruned_heads) over a real 3-node cluster: the coordinator
/// plans from the pruned meta model, every stage builds its pruned layers before loading, and the outputs are
/// Hugging Face's.
/// </summary>
[Collection("cluster")]
public class ClusterPrunedModelTests : IClassFixture<ThreeNodeCluster>
{
    private readonly ThreeNodeCluster _fixture;

    public ClusterPrunedModelTests(ThreeNodeCluster fixture) => _fixture = fixture;

    [Fact]
    public async Task The_pruned_gpt2_split_over_three_nodes_matches_hugging_face()
    {
        var r = new ReferenceData("gpt2_pruned", TestPaths.PrunedGpt2);
        var client = _fixture.Cluster.Client;
        var loaded = await client.LoadAsync(Requests.Load(r.Folder), TimeSpan.FromMinutes(2));
        Assert.Equal(new[] { "node-1", "node-2", "node-3" }, loaded.DeviceMap.Select(e => e.Device.Split('/')[0]).Distinct().Order());
        // Planned from the pruned shapes: each stage holds exactly what the plan said (a plan from unpruned shapes would not).
        Assert.All(loaded.Devices, d => Assert.Equal(d.PlannedBytes, d.LoadedBytes));

        await ReferenceOnCluster.Check(client, loaded, r, "on 3 nodes");
    }
}
