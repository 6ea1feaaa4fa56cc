using System.Text.Json.Nodes;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Modeling;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Quantized models on nodes whose memory cannot hold their blocks: the planner (counting packed bytes) puts blocks on
/// each node's disk device, those workers keep them packed in the node's offload folder and bring them in per step (the
/// loader's <c>PackedOffload</c>, nothing more), and logits and greedy tokens equal the resident run's.
/// </summary>
[Collection("cluster")]
public class ClusterQuantizedOffloadTests : IAsyncLifetime
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

    /// <summary>
    /// Memory for the embeddings on node-1 and the norm and head on node-3 plus half a packed block, and almost none on
    /// node-2: the blocks, counted packed (as quantize on load counts them too), go to the nodes' disks.
    /// </summary>
    private static string MaxMemory(ReferenceData r, string? quantize = null)
    {
        var meta = ShardPipe.Modeling.Models.AutoModel.FromConfig(ShardPipe.Checkpoints.PretrainedConfig.FromFolder(r.Folder));
        var tree = quantize is null ? ShardPipe.Modeling.Core.PlacementTree.ToPlacementTree(meta)
            : ShardPipe.Modeling.Quantization.RoundToNearest.PlanTree(meta, quantize, 32, false);
        var sizes = ShardPipe.Placement.ModuleSizes.Compute(tree, ShardPipe.Checkpoints.DType.F32, memoryBytes: true);
        long half = (long)sizes[meta.LayerPath(0)] / 2;
        long first = (long)sizes[meta.InputEmbeddingsPath] + half, last = (long)(sizes[meta.FinalNormPath] + sizes[meta.OutputEmbeddingsPath]) + half;
        return $"node-1/cpu={first},node-2/cpu=1KB,node-3/cpu={last}";
    }

    private async Task CheckAgainst(ModelLoaded loaded, ReferenceData r, ShardPipe.Modeling.Models.CausalLMModel resident, string what)
    {
        var client = _cluster.Client;
        foreach (var c in r.ForwardCases)
        {
            var ids = ReferenceData.Ints(c["input_ids"]);
            var mask = c["attention_mask"] is JsonArray ? ReferenceData.Ints(c["attention_mask"]) : null;
            var outcome = await client.RunAsync(Requests.Forward(ids, mask), loaded.Stages, TimeSpan.FromSeconds(30));
            using var scope = TorchSharp.torch.NewDisposeScope();
            var logits = resident.Forward(ReferenceModelTests.Tensor2(ids), mask is null ? null : ReferenceModelTests.Tensor2(mask));
            for (int b = 0; b < ids.Length; b++)
                ReferenceModelTests.AssertClose(logits[b, ids[b].Length - 1].data<float>().Select(v => (double)v).ToArray(), outcome.LastLogits![b], 1e-4, $"{r.Name}/{c["name"]} row {b} {what}");
        }
        // Greedy, eos ignored (the cluster pads finished rows with the model's own pad): ten tokens as one process makes them.
        var prompt = new[] { new long[] { 5, 17, 42, 9, 3, 77 } };
        var expected = TokenGenerator.Greedy(resident, prompt, null, new GenerationOptions { MaxNewTokens = 10, IgnoreEos = true }).Sequences[0][prompt[0].Length..];
        var run = await client.RunAsync(new Generate(Guid.NewGuid().ToString("N"), prompt, null, 10, true, new SamplingSettings(true, 0, 0, 1, 0)),
            loaded.Stages, TimeSpan.FromSeconds(30));
        Assert.Equal(expected, run.NewTokens[0]);
    }

    [Theory]
    [InlineData("gptq_4bit_g32_asym_actorder")]
    [InlineData("ct_w4a16_g32_sym")]
    public async Task A_quantized_checkpoint_with_blocks_on_node_disks_gives_the_resident_outputs(string name)
    {
        var r = QuantizedReferenceTests.Reference(name);
        var loaded = await _cluster.Client.LoadAsync(Requests.Load(r.Folder, maxMemory: MaxMemory(r)), TimeSpan.FromMinutes(2));
        Assert.Contains(loaded.DeviceMap, e => e.Module.StartsWith("model.layers.", StringComparison.Ordinal) && e.Device.EndsWith("/disk", StringComparison.Ordinal));
        // A disk worker holds (on disk) exactly the packed bytes it was planned.
        Assert.Contains(loaded.Devices, d => d.Device.EndsWith("/disk", StringComparison.Ordinal) && d.LoadedBytes == d.PlannedBytes && d.LoadedBytes > 0);
        Assert.NotEmpty(Directory.GetFiles(_offload.Path, "*.safetensors", SearchOption.AllDirectories));
        var resident = QuantizedReferenceTests.Load(r);
        try { await CheckAgainst(loaded, r, resident, "with blocks on node disks"); }
        finally { resident.Release(); }
    }

    [Fact]
    public async Task Quantize_on_load_with_blocks_on_node_disks_gives_one_process_quantized_outputs()
    {
        var r = new ReferenceData("llama_untied");
        var loaded = await _cluster.Client.LoadAsync(Requests.Load(r.Folder, r.Variant, maxMemory: MaxMemory(r, "int4"), quantize: new QuantizeRequest("int4", 32, false)), TimeSpan.FromMinutes(2));
        Assert.Contains(loaded.DeviceMap, e => e.Module.StartsWith("model.layers.", StringComparison.Ordinal) && e.Device.EndsWith("/disk", StringComparison.Ordinal));
        var resident = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { Variant = r.Variant, DType = "float32", Quantize = "int4", QuantizeGroupSize = 32 });
        try { await CheckAgainst(loaded, r, resident, "quantized on load, blocks on node disks"); }
        finally { resident.Release(); }
    }
}
