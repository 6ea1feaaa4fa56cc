using System.Text.Json.Nodes;
using ShardPipe.Tests.Modeling;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Every public quantized checkpoint (GPTQ, AWQ, compressed-tensors) split over a real 3-node cluster: each stage loads its
/// slice packed, holds exactly its planned (packed) bytes, and logits (1e-4) and greedy tokens equal transformers'.
/// </summary>
[Collection("cluster")]
public class ClusterQuantizedTests : IClassFixture<ThreeNodeCluster>
{
    private readonly ThreeNodeCluster _fixture;

    public ClusterQuantizedTests(ThreeNodeCluster fixture) => _fixture = fixture;

    [Theory]
    [MemberData(nameof(QuantizedReferenceTests.Cases), MemberType = typeof(QuantizedReferenceTests))]
    public async Task A_quantized_model_split_over_three_nodes_matches_hugging_face(string name)
    {
        var r = QuantizedReferenceTests.Reference(name);
        var client = _fixture.Cluster.Client;
        var loaded = await client.LoadAsync(Requests.Load(r.Folder), TimeSpan.FromMinutes(2));
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
            long eos = c["generation_kwargs"]!["eos_token_id"]!.GetValue<long>();
            var outcome = await client.RunAsync(Requests.Generate(ids, mask, c["generation_kwargs"]!["max_new_tokens"]!.GetValue<int>()), loaded.Stages, TimeSpan.FromSeconds(30));
            var expected = ReferenceData.Ints(c["sequences"]);
            for (int b = 0; b < ids.Length; b++)
            {
                // The case passes pad_token_id 0 to generate; a cluster request pads finished rows with the model's own pad
                // (these checkpoints set none, so eos): the tokens up to and including eos must be equal, and as many.
                var got = ids[b].Concat(outcome.NewTokens[b]).ToArray();
                Assert.Equal(expected[b].Length, got.Length);
                int end = Array.IndexOf(expected[b], eos, ids[b].Length) is var e and >= 0 ? e + 1 : expected[b].Length;
                Assert.Equal(expected[b][..end], got[..end]);
            }
        }
    }

    /// <summary>In bfloat16 the float parts halve but scales stay float32: each stage still holds exactly its planned bytes.</summary>
    [Fact]
    public async Task A_quantized_model_in_bfloat16_holds_its_planned_bytes_on_every_stage()
    {
        var r = QuantizedReferenceTests.Reference("ct_w4a16_g32_sym");
        var client = _fixture.Cluster.Client;
        var loaded = await client.LoadAsync(Requests.Load(r.Folder, dtype: "bfloat16"), TimeSpan.FromMinutes(2));
        // The one difference is not quantization's: Accelerate's sizing counts a stage's float32 rotary inv_freq buffer
        // (head_dim/2 = 8 values) at the load dtype, 16 bytes fewer than it holds; packed codes and scales count exactly.
        Assert.All(loaded.Devices, d => Assert.InRange(d.LoadedBytes - d.PlannedBytes, 0, 16));
        var c = r.ForwardCases.First();
        var outcome = await client.RunAsync(Requests.Forward(ReferenceData.Ints(c["input_ids"])), loaded.Stages, TimeSpan.FromSeconds(30));
        var expected = ReferenceData.Doubles(c["last_logits"]!);
        ReferenceModelTests.AssertClose(expected[0], outcome.LastLogits![0], 0.1, "bfloat16 activations");
    }
}
