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

        foreach (var c in r.ForwardCases)
        {
            var ids = ReferenceData.Ints(c["input_ids"]);
            var mask = c["attention_mask"] is JsonArray ? ReferenceData.Ints(c["attention_mask"]) : null;
            var pos = c["position_ids"] is JsonArray ? ReferenceData.Ints(c["position_ids"]) : null;
            var outcome = await client.RunAsync(Requests.Forward(ids, mask, pos), loaded.Stages, TimeSpan.FromSeconds(30));
            var expected = ReferenceData.Doubles(c["last_logits"]!);
            for (int b = 0; b < ids.Length; b++)
                ReferenceModelTests.AssertClose(expected[b], outcome.LastLogits![b], 1e-4, $"{name}/{c["name"]} row {b} on 3 nodes");
        }
        foreach (var c in r.GenerateCases)
        {
            var ids = ReferenceData.Ints(c["input_ids"]);
            var mask = c["attention_mask"] is JsonArray ? ReferenceData.Ints(c["attention_mask"]) : null;
            int n = c["generation_kwargs"]!["max_new_tokens"]!.GetValue<int>();
            var outcome = await client.RunAsync(Requests.Generate(ids, mask, n), loaded.Stages, TimeSpan.FromSeconds(30));
            var sequences = ids.Select((row, b) => row.Concat(outcome.NewTokens[b]).ToArray()).ToArray();
            Assert.Equal(ReferenceData.Ints(c["sequences"]), sequences);
        }
    }
}
