using System.Text.Json.Nodes;
using ShardPipe.Tests.Checkpoints;
using ShardPipe.Tests.Modeling;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Every reference model split over a real 3-node cluster: balanced placement names all three nodes, each stage
/// holds exactly its planned bytes, and forward logits (1e-4) and greedy tokens equal Hugging Face's.
/// </summary>
[Collection("cluster")]
public class ClusterPipelineTests : IClassFixture<ThreeNodeCluster>
{
    private readonly ThreeNodeCluster _fixture;

    public ClusterPipelineTests(ThreeNodeCluster fixture) => _fixture = fixture;

    [Theory]
    [MemberData(nameof(ShardingTests.ReferenceModels), MemberType = typeof(ShardingTests))]
    public async Task A_model_split_over_three_nodes_matches_hugging_face(string name)
    {
        var r = new ReferenceData(name);
        var client = _fixture.Cluster.Client;
        var loaded = await client.LoadAsync(Requests.Load(r.Folder, r.Variant), TimeSpan.FromMinutes(2));
        Assert.Equal(new[] { "node-1", "node-2", "node-3" }, loaded.DeviceMap.Select(e => e.Device.Split('/')[0]).Distinct().Order());
        Assert.All(loaded.Devices, d => Assert.Equal(d.PlannedBytes, d.LoadedBytes));

        await ReferenceOnCluster.Check(client, loaded, r, "on 3 nodes");
    }
}
