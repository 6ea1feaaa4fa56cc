using System.Text.Json.Nodes;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
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

    /// <summary>
    /// --quantize on a cluster: each of three stages packs its own slice as it loads it; the plan counts the packed bytes
    /// (each stage holds exactly them, far fewer than the float load), and greedy tokens and logits equal one process's
    /// quantize-on-load run of the same options.
    /// </summary>
    [Theory]
    [InlineData("int4", 32, true)]
    [InlineData("int8", -1, false)]
    [InlineData("int4", 128, false)]
    public async Task Quantize_on_load_over_three_nodes_generates_what_one_process_does(string method, int groupSize, bool head)
    {
        string folder = TestPaths.Model("llama_untied");
        var prompt = new[] { new long[] { 5, 17, 42, 9, 3, 77 } };
        var local = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { DType = "float32", Quantize = method, QuantizeGroupSize = groupSize, QuantizeHead = head });
        long[] expected;
        float[] expectedLogits;
        try
        {
            expected = TokenGenerator.Greedy(local, prompt, null, new GenerationOptions { MaxNewTokens = 10, IgnoreEos = true }).Sequences[0][prompt[0].Length..];
            using var ids = TorchSharp.torch.tensor(prompt[0], new long[] { 1, prompt[0].Length });
            using var logits = local.Forward(ids, null, null, null, lastOnly: true);
            expectedLogits = logits.reshape(-1).data<float>().ToArray();
        }
        finally { local.Release(); }

        var client = _fixture.Cluster.Client;
        var floats = await client.LoadAsync(Requests.Load(folder), TimeSpan.FromMinutes(2));
        long floatBytes = floats.Devices.Sum(d => d.PlannedBytes);
        var loaded = await client.LoadAsync(Requests.Load(folder, quantize: new QuantizeRequest(method, groupSize, head)), TimeSpan.FromMinutes(2));
        Assert.Equal(new[] { "node-1", "node-2", "node-3" }, loaded.DeviceMap.Select(e => e.Device.Split('/')[0]).Distinct().Order());
        Assert.All(loaded.Devices, d => Assert.Equal(d.PlannedBytes, d.LoadedBytes));
        Assert.True(loaded.Devices.Sum(d => d.PlannedBytes) < floatBytes * 0.8, $"planned {loaded.Devices.Sum(d => d.PlannedBytes)} bytes quantized vs {floatBytes} in float32");

        var outcome = await client.RunAsync(new Generate(Guid.NewGuid().ToString("N"), prompt, null, 10, true, new SamplingSettings(true, 0, 0, 1, 0)),
            loaded.Stages, TimeSpan.FromSeconds(30));
        Assert.Equal(expected, outcome.NewTokens[0]);
        var forward = await client.RunAsync(Requests.Forward(prompt), loaded.Stages, TimeSpan.FromSeconds(30));
        ReferenceModelTests.AssertClose(expectedLogits.Select(v => (double)v).ToArray(), forward.LastLogits![0], 1e-4, $"{method} g{groupSize} on 3 nodes");
    }

    [Fact]
    public async Task Quantize_on_load_of_an_already_quantized_checkpoint_or_with_a_bad_method_fails_the_load_naming_it()
    {
        var client = _fixture.Cluster.Client;
        var already = await Assert.ThrowsAnyAsync<Exception>(() => client.LoadAsync(
            Requests.Load(QuantizedReferenceTests.Reference("ct_w4a16_g32_sym").Folder, quantize: new QuantizeRequest("int4", 32, false)), TimeSpan.FromMinutes(1)));
        Assert.Contains("already quantized", already.Message);
        var bad = await Assert.ThrowsAnyAsync<Exception>(() => client.LoadAsync(
            Requests.Load(TestPaths.Model("llama_untied"), quantize: new QuantizeRequest("int3", 32, false)), TimeSpan.FromMinutes(1)));
        Assert.Contains("int3", bad.Message);
    }
}
