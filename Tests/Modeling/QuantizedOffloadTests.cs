using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Modeling.Quantization;
using ShardPipe.Placement;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// Quantized Linears on disk (device_map "disk", or past max_memory under "auto"): kept there packed, brought in when their
/// layer runs; the same logits and greedy tokens as the resident load, never every offloaded layer in memory at once, and a
/// packed file that changed under the model is a typed error naming it.
/// </summary>
public class QuantizedOffloadTests
{
    private static (double[][] Last, long[][][] Greedy) Run(CausalLMModel model, ReferenceData r)
    {
        var last = new List<double[]>();
        foreach (var c in r.ForwardCases)
        {
            var ids = ReferenceData.Ints(c["input_ids"]);
            var mask = c["attention_mask"] is JsonArray ? ReferenceData.Ints(c["attention_mask"]) : null;
            var pos = c["position_ids"] is JsonArray ? ReferenceData.Ints(c["position_ids"]) : null;
            using var scope = NewDisposeScope();
            var logits = model.Forward(ReferenceModelTests.Tensor2(ids), mask is null ? null : ReferenceModelTests.Tensor2(mask), pos is null ? null : ReferenceModelTests.Tensor2(pos));
            for (int b = 0; b < ids.Length; b++) last.Add(logits[b, ids[b].Length - 1].data<float>().Select(v => (double)v).ToArray());
        }
        var greedy = r.GenerateCases.Select(c => ReferenceData.Greedy(model, c)).ToArray();
        return (last.ToArray(), greedy);
    }

    private static void AssertSame((double[][] Last, long[][][] Greedy) expected, (double[][] Last, long[][][] Greedy) got, string what)
    {
        Assert.Equal(expected.Last.Length, got.Last.Length);
        for (int i = 0; i < expected.Last.Length; i++)
            ReferenceModelTests.AssertClose(expected.Last[i], got.Last[i].Select(v => (float)v).ToArray(), 1e-4, $"{what} row {i}");
        Assert.Equal(expected.Greedy, got.Greedy);
    }

    /// <summary>Between calls an offloaded quantized Linear holds nothing: no packed weight, no tensor.</summary>
    private static void AssertNothingHeld(CausalLMModel model, IEnumerable<string> diskPrefixes)
    {
        var offloaded = QuantizedLinears.Of(model).Where(l => ModulePath.CoveredByAny(diskPrefixes, l.Path)).ToList();
        Assert.NotEmpty(offloaded);
        foreach (var (path, linear) in offloaded)
        {
            Assert.Null(linear.Quantized!.Packed);
            Assert.DoesNotContain(linear.LocalTensors, t => t.Slot.IsMaterialised);
        }
        Assert.Equal(0, model.Offload!.InUseBytes);
    }

    [Theory]
    [MemberData(nameof(QuantizedReferenceTests.Cases), MemberType = typeof(QuantizedReferenceTests))]
    public void Quantized_checkpoint_with_layers_on_disk_gives_the_resident_logits_and_tokens(string name)
    {
        var r = QuantizedReferenceTests.Reference(name);
        var resident = QuantizedReferenceTests.Load(r);
        var expected = Run(resident, r);
        resident.Release();
        var map = DiskOffloadTests.HalfOnDisk(AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder)));
        var disk = map.Where(kv => kv.Value == "disk").Select(kv => kv.Key).ToList();
        using var tmp = new TempDir();
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "float32", DeviceMapDict = map, OffloadFolder = tmp.Path });
        try
        {
            Assert.True(model.Offload!.PackedLinears > 0);
            Assert.NotEmpty(Directory.GetDirectories(tmp.Path, "quantized-*").SelectMany(d => Directory.GetFiles(d, "*.safetensors")));
            AssertNothingHeld(model, disk);
            var got = Run(model, r);
            AssertSame(expected, got, $"{name}, layers on disk");
            // And the reference itself (transformers with the dequantized weights): fp32 1e-4, greedy tokens equal.
            int row = 0;
            foreach (var c in r.ForwardCases)
                foreach (var e in ReferenceData.Doubles(c["last_logits"]!))
                    ReferenceModelTests.AssertClose(e, got.Last[row++].Select(v => (float)v).ToArray(), 1e-4, $"{name}/{c["name"]} vs transformers, layers on disk");
            Assert.Equal(r.GenerateCases.Select(c => ReferenceData.Ints(c["sequences"])).ToArray(), got.Greedy);
            AssertNothingHeld(model, disk);
            // Prefetch off: the same tokens.
            model.Offload!.Prefetch = false;
            Assert.Equal(expected.Greedy, Run(model, r).Greedy);
        }
        finally { model.Release(); }
        // The load's packed files go with the model.
        Assert.Empty(Directory.GetDirectories(tmp.Path, "quantized-*"));
    }

    [Fact]
    public void Auto_with_a_small_max_memory_sends_packed_layers_to_disk_and_gives_the_same_tokens()
    {
        var r = QuantizedReferenceTests.Reference("gptq_4bit_g32_asym_actorder");
        var resident = QuantizedReferenceTests.Load(r);
        var expected = Run(resident, r);
        resident.Release();
        // A budget of the embeddings and one block's packed bytes: the planner (counting packed bytes) sends the rest to disk.
        var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder));
        var sizes = ModuleSizes.Compute(meta.ToPlacementTree(), DType.F32, memoryBytes: true);
        long budget = (long)(sizes[meta.InputEmbeddingsPath] + sizes[meta.LayerPath(0)] * 1.5);
        using var tmp = new TempDir();
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions
        {
            DType = "float32", DeviceMap = "auto", MaxMemory = $"cpu={budget}", OffloadFolder = tmp.Path,
        });
        try
        {
            Assert.Contains(model.HfDeviceMap, kv => kv.Value == "disk");
            Assert.True(model.Offload!.PackedLinears > 0);
            AssertSame(expected, Run(model, r), "auto, small max_memory");
        }
        finally { model.Release(); }
    }

    [Theory]
    [InlineData("llama_untied", "int4", 32)]
    [InlineData("qwen2", "int8", -1)]        // biases on the offloaded Linears
    [InlineData("llama_bf16", "int4", 16)]   // stored bf16, loaded and quantized in bfloat16
    public void Quantize_on_load_with_layers_on_disk_gives_the_resident_logits_and_tokens(string name, string method, int groupSize)
    {
        var r = new ReferenceData(name);
        string? dtype = r.Json["saved_dtype"]!.GetValue<string>() == "bfloat16" ? "bfloat16" : null;
        var options = new FromPretrainedOptions { Variant = r.Variant, DType = dtype, Quantize = method, QuantizeGroupSize = groupSize };
        var resident = PreTrainedModel.FromPretrained(r.Folder, options);
        var expected = Run(resident, r);
        int residentPacked = QuantizedLinears.Of(resident).Count();
        resident.Release();
        var map = DiskOffloadTests.HalfOnDisk(AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder)));
        var disk = map.Where(kv => kv.Value == "disk").Select(kv => kv.Key).ToList();
        using var tmp = new TempDir();
        var model = PreTrainedModel.FromPretrained(r.Folder, options with { DeviceMapDict = map, OffloadFolder = tmp.Path });
        try
        {
            Assert.Equal(residentPacked, QuantizedLinears.Of(model).Count());
            Assert.True(model.Offload!.PackedLinears > 0);
            AssertNothingHeld(model, disk);
            AssertSame(expected, Run(model, r), $"{name} {method} g{groupSize}, layers on disk");
            AssertNothingHeld(model, disk);
            // Saving needs every packed Linear in memory: refused naming one on disk, not written half.
            var save = Assert.Throws<UnsupportedException>(() => PreTrainedModel.SavePretrained(model, tmp.Sub("saved")));
            Assert.Contains(disk[0], save.Message);
            Assert.False(File.Exists(Path.Combine(tmp.Path, "saved", "config.json")));
        }
        finally { model.Release(); }
    }

    [Fact]
    public void Offloaded_layers_are_brought_in_one_or_two_at_a_time_never_all_at_once()
    {
        var r = QuantizedReferenceTests.Reference("gptq_4bit_g32_sym");
        var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder));
        // Every block and the head on disk: three offloaded modules.
        var map = new Dictionary<string, string>
        {
            [meta.InputEmbeddingsPath] = "cpu", [meta.FinalNormPath] = "cpu", [meta.OutputEmbeddingsPath] = "disk",
        };
        for (int i = 0; i < meta.NumLayers; i++) map[meta.LayerPath(i)] = "disk";
        var sizes = ModuleSizes.Compute(meta.ToPlacementTree(), DType.F32, memoryBytes: true);
        var diskSizes = map.Where(kv => kv.Value == "disk").Select(kv => (long)sizes[kv.Key]).OrderDescending().ToList();
        using var tmp = new TempDir();
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "float32", DeviceMapDict = map, OffloadFolder = tmp.Path });
        try
        {
            var offload = model.Offload!;
            offload.Prefetch = true; // the worst case: the next module read while one runs
            // Packed bytes, as the planner counts them (less the blocks' rotary buffers, which stay in memory).
            Assert.InRange(offload.Bytes, diskSizes.Sum() * 99 / 100, diskSizes.Sum());
            Run(model, r);
            Assert.Equal(0, offload.InUseBytes);
            Assert.True(offload.PeakInUseBytes > 0);
            Assert.True(offload.PeakInUseBytes <= diskSizes[0] + diskSizes[1], $"peak {offload.PeakInUseBytes} B in memory, two largest offloaded modules {diskSizes[0] + diskSizes[1]} B");
            Assert.True(offload.PeakInUseBytes < offload.Bytes, $"peak {offload.PeakInUseBytes} B: every offloaded module ({offload.Bytes} B) at once");
        }
        finally { model.Release(); }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_packed_file_corrupted_or_truncated_after_loading_is_a_typed_error_naming_it(bool truncate)
    {
        var r = QuantizedReferenceTests.Reference("ct_w4a16_g32_sym");
        var map = DiskOffloadTests.HalfOnDisk(AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder)));
        using var tmp = new TempDir();
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "float32", DeviceMapDict = map, OffloadFolder = tmp.Path, OffloadPrefetch = false });
        try
        {
            var prompt = new[] { new long[] { 5, 17, 42 } };
            TokenGenerator.Greedy(model, prompt, null, new GenerationOptions { MaxNewTokens = 2 });
            string file = Directory.GetDirectories(tmp.Path, "quantized-*").SelectMany(d => Directory.GetFiles(d, "*.safetensors")).OrderByDescending(f => new FileInfo(f).Length).First();
            using (var fs = new FileStream(file, FileMode.Open, FileAccess.ReadWrite))
            {
                if (truncate) fs.SetLength(fs.Length / 2);
                else
                {
                    // One bit of the last tensor's bytes: still valid codes, so only the hash can tell.
                    fs.Position = fs.Length - 3;
                    int b = fs.ReadByte();
                    fs.Position = fs.Length - 3;
                    fs.WriteByte((byte)(b ^ 0x10));
                }
            }
            var ex = Assert.ThrowsAny<ShardPipeException>(() => TokenGenerator.Greedy(model, prompt, null, new GenerationOptions { MaxNewTokens = 2 }));
            Assert.Contains(Path.GetFileName(file), ex.Message);
        }
        finally { model.Release(); }
    }

    [Fact]
    public void Forward_cli_runs_a_gptq_checkpoint_planned_onto_disk()
    {
        var r = QuantizedReferenceTests.Reference("gptq_4bit_g32_sym");
        var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder));
        var sizes = ModuleSizes.Compute(meta.ToPlacementTree(), DType.F32, memoryBytes: true);
        long budget = (long)(sizes[meta.InputEmbeddingsPath] + sizes[meta.LayerPath(0)] * 1.5);
        var c = r.ForwardCases.First();
        using var tmp = new TempDir();
        var run = ShardPipeProcess.Run("forward", "--model", r.Folder, "--dtype", "float32", "--input-ids", ReferenceData.Csv(ReferenceData.Ints(c["input_ids"])),
            "--device-map", "auto", "--max-memory", $"cpu={budget}", "--offload-folder", tmp.Path, "--json");
        Assert.True(run.ExitCode == 0, run.Stderr);
        var json = JsonNode.Parse(run.Stdout)!;
        Assert.Contains(((JsonObject)json["hf_device_map"]!).Select(kv => kv.Value!.GetValue<string>()), d => d == "disk");
        ReferenceModelTests.AssertClose(ReferenceData.Doubles(c["last_logits"]!)[0],
            ((JsonArray)json["last_logits"]![0]!).Select(x => (float)x!.GetValue<double>()).ToArray(), 1e-4, "forward CLI, gptq blocks on disk");
        // Read into reused buffers instead of mapped (as off Linux): the same logits.
        using var tmp2 = new TempDir();
        var read = ShardPipeProcess.Run(new Dictionary<string, string> { ["SHARDPIPE_OFFLOAD_READ"] = "1" }, "forward", "--model", r.Folder, "--dtype", "float32",
            "--input-ids", ReferenceData.Csv(ReferenceData.Ints(c["input_ids"])), "--device-map", "auto", "--max-memory", $"cpu={budget}", "--offload-folder", tmp2.Path, "--json");
        Assert.True(read.ExitCode == 0, read.Stderr);
        ReferenceModelTests.AssertClose(ReferenceData.Doubles(c["last_logits"]!)[0],
            ((JsonArray)JsonNode.Parse(read.Stdout)!["last_logits"]![0]!).Select(x => (float)x!.GetValue<double>()).ToArray(), 1e-4, "forward CLI, gptq blocks on disk, read into buffers");
        // Without an offload folder: exit 2, one error line naming offload_folder.
        var refused = ShardPipeProcess.Run("forward", "--model", r.Folder, "--input-ids", "1,2", "--device-map", "auto", "--max-memory", $"cpu={budget}");
        Assert.Equal(2, refused.ExitCode);
        Assert.Contains("offload_folder", refused.Stderr);
    }

    [Fact]
    public void Quantized_layers_on_disk_need_an_offload_folder()
    {
        var r = QuantizedReferenceTests.Reference("gptq_8bit_g64");
        var map = DiskOffloadTests.HalfOnDisk(AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder)));
        var ex = Assert.Throws<InvalidInputException>(() => PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "float32", DeviceMapDict = map }));
        Assert.Contains("offload_folder", ex.Message);
        Assert.Contains("quantized", ex.Message);
    }
}
