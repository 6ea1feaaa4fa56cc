using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Checkpoints;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>device_map "disk" in one process: the same logits and greedy tokens as in memory, on every reference model.</summary>
public class DiskOffloadTests
{
    /// <summary>Half of the decoder blocks (the later ones) on disk, everything else on the CPU.</summary>
    internal static Dictionary<string, string> HalfOnDisk(CausalLMModel meta)
    {
        var map = new Dictionary<string, string>();
        var layers = Enumerable.Range(0, meta.NumLayers).Select(meta.LayerPath).ToList();
        for (int i = 0; i < layers.Count; i++) map[layers[i]] = i >= layers.Count / 2 ? "disk" : "cpu";
        foreach (var (key, _) in meta.NamedParameters())
            if (!layers.Any(l => ShardPipe.Placement.ModulePath.Covers(l, key))) map[ShardPipe.Placement.ModulePath.Parent(key)] = "cpu";
        return map;
    }

    [Theory]
    [MemberData(nameof(ShardingTests.ReferenceModels), MemberType = typeof(ShardingTests))]
    public void Half_the_blocks_on_disk_give_the_in_memory_logits_and_tokens(string name)
    {
        var r = new ReferenceData(name);
        var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder));
        var map = HalfOnDisk(meta);
        using var tmp = new TempDir();
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { Variant = r.Variant, DType = "float32", DeviceMapDict = map, OffloadFolder = tmp.Path });
        try
        {
            Assert.NotNull(model.Offload);
            Assert.True(model.Offload!.Bytes > 0);
            Assert.Contains(model.HfDeviceMap, kv => kv.Value == "disk");
            // Offloaded parameters are not in memory between calls.
            Assert.DoesNotContain(model.NamedParameters(), p => p.Key.StartsWith(meta.LayerPath(meta.NumLayers - 1) + ".", StringComparison.Ordinal) && p.Slot.IsMaterialised);
            foreach (var c in r.ForwardCases)
            {
                var ids = ReferenceData.Ints(c["input_ids"]);
                var mask = c["attention_mask"] is JsonArray ? ReferenceData.Ints(c["attention_mask"]) : null;
                var pos = c["position_ids"] is JsonArray ? ReferenceData.Ints(c["position_ids"]) : null;
                using var scope = NewDisposeScope();
                var logits = model.Forward(ReferenceModelTests.Tensor2(ids), mask is null ? null : ReferenceModelTests.Tensor2(mask), pos is null ? null : ReferenceModelTests.Tensor2(pos));
                var expected = ReferenceData.Doubles(c["last_logits"]!);
                for (int b = 0; b < ids.Length; b++)
                    ReferenceModelTests.AssertClose(expected[b], logits[b, ids[b].Length - 1].data<float>().ToArray(), 1e-4, $"{name}/{c["name"]} row {b} with blocks on disk");
            }
            foreach (var c in r.GenerateCases)
                Assert.Equal(ReferenceData.Ints(c["sequences"]), ReferenceData.Greedy(model, c));
            // Stored at another dtype than loaded (fp16/bf16 → float32): converted once into the offload folder, with an index.
            bool converted = r.Json["saved_dtype"]!.GetValue<string>() != "float32";
            Assert.Equal(converted, File.Exists(Path.Combine(tmp.Path, "offload_index.json")));
        }
        finally
        {
            model.Release();
        }
    }

    [Fact]
    public void Prefetch_off_gives_the_same_tokens()
    {
        var r = new ReferenceData("llama_untied");
        var map = HalfOnDisk(AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder)));
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DeviceMapDict = map, OffloadPrefetch = false });
        try
        {
            foreach (var c in r.GenerateCases) Assert.Equal(ReferenceData.Ints(c["sequences"]), ReferenceData.Greedy(model, c));
        }
        finally { model.Release(); }
    }

    [Fact]
    public void A_shard_truncated_after_loading_is_a_typed_error_naming_it_not_a_crash()
    {
        // Offloaded weights are used in place from the mapped file: a file cut short under a running model must end the
        // step with an error naming it (the pages are populated, and checked, before any computation touches them).
        var r = new ReferenceData("llama_untied");
        using var tmp = new TempDir();
        string folder = tmp.File("model");
        Directory.CreateDirectory(folder);
        foreach (var f in Directory.GetFiles(r.Folder)) File.Copy(f, Path.Combine(folder, Path.GetFileName(f)));
        var map = HalfOnDisk(AutoModel.FromConfig(PretrainedConfig.FromFolder(folder)));
        var model = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { DeviceMapDict = map, OffloadPrefetch = false });
        try
        {
            var prompt = new[] { new long[] { 5, 17, 42 } };
            TokenGenerator.Greedy(model, prompt, null, new GenerationOptions { MaxNewTokens = 2 });
            string shard = Directory.GetFiles(folder, "*.safetensors").OrderByDescending(f => new FileInfo(f).Length).First();
            using (var fs = new FileStream(shard, FileMode.Open, FileAccess.Write)) fs.SetLength(fs.Length / 4);
            var ex = Assert.ThrowsAny<ShardPipeException>(() => TokenGenerator.Greedy(model, prompt, null, new GenerationOptions { MaxNewTokens = 2 }));
            Assert.Contains(Path.GetFileName(shard), ex.Message);
        }
        finally { model.Release(); }
    }

    [Fact]
    public void Converting_offloaded_weights_needs_a_writable_offload_folder()
    {
        var r = new ReferenceData("llama_fp16");
        var map = HalfOnDisk(AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder)));
        var none = Assert.Throws<InvalidInputException>(() => PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "float32", DeviceMapDict = map }));
        Assert.Contains("offload_folder", none.Message);
        using var tmp = new TempDir();
        string blocked = tmp.File("not-a-folder");
        File.WriteAllText(blocked, "a file where the folder should be");
        var bad = Assert.Throws<CheckpointFormatException>(() => PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "float32", DeviceMapDict = map, OffloadFolder = blocked }));
        Assert.Contains("not-a-folder", bad.Message);
        // Loaded at its stored dtype, the weights are read from the checkpoint itself: no folder needed.
        var native = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "auto", DeviceMapDict = map });
        Assert.Null(native.Offload!.Folder);
        native.Release();
    }

    [Fact]
    public void Forward_cli_runs_with_blocks_on_disk()
    {
        var r = new ReferenceData("llama_untied");
        var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder));
        string map = new JsonObject(HalfOnDisk(meta).Select(kv => new KeyValuePair<string, JsonNode?>(kv.Key, kv.Value))).ToJsonString();
        var c = r.ForwardCases.First();
        var ids = ReferenceData.Csv(ReferenceData.Ints(c["input_ids"]));
        using var tmp = new TempDir();
        var run = ShardPipeProcess.Run("forward", "--model", r.Folder, "--input-ids", ids, "--device-map", map, "--offload-folder", tmp.Path, "--json");
        Assert.True(run.ExitCode == 0, run.Stderr);
        var json = JsonNode.Parse(run.Stdout)!;
        ReferenceModelTests.AssertClose(ReferenceData.Doubles(c["last_logits"]!)[0],
            ((JsonArray)json["last_logits"]![0]!).Select(x => (float)x!.GetValue<double>()).ToArray(), 1e-4, "forward CLI, blocks on disk");
        Assert.Equal("disk", json["hf_device_map"]![meta.LayerPath(meta.NumLayers - 1)]!.GetValue<string>());
    }
}
