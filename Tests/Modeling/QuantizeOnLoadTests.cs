using System.Text.Json.Nodes;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Modeling.Quantization;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>--quantize int8|int4: every Linear but the head packed on load, computing what its dequantized weight computes; saved as compressed-tensors and loaded back identically.</summary>
public class QuantizeOnLoadTests
{
    [Theory]
    [InlineData("llama_untied", "int4", 32)]
    [InlineData("llama_untied", "int8", 128)]
    [InlineData("qwen2", "int4", 16)]   // biases; 176 inputs: the portable kernel
    [InlineData("llama_tied", "int8", -1)]
    [InlineData("mistral_window", "int4", -1)]
    public void Quantized_model_computes_its_dequantized_weights(string name, string method, int groupSize)
    {
        var r = new ReferenceData(name);
        var quantized = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { Variant = r.Variant, Quantize = method, QuantizeGroupSize = groupSize });
        var dense = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { Variant = r.Variant });
        var linears = QuantizedLinears.Of(quantized).ToList();
        Assert.Equal(dense.NamedModules().Count(m => m.Module is Linear && m.Path != dense.OutputEmbeddingsPath), linears.Count);
        var denseModules = dense.NamedModules().ToDictionary(m => m.Path, m => m.Module);
        foreach (var (path, linear) in linears)
        {
            Assert.False(linear.Weight.IsMaterialised);
            var packed = linear.Quantized!.Packed!;
            Assert.Equal(method == "int4" ? 4 : 8, packed.Bits);
            var original = ((Linear)denseModules[path]).Weight;
            var dq = packed.Dequantize();
            double step = (double)(original.Tensor.abs().max().item<float>()) / (method == "int4" ? 7.5 : 127.5);
            Assert.True((dq - original.Tensor).abs().max().item<float>() <= step / 2 * 1.001, $"{path}: rounding error beyond half a step");
            original.Set(dq);
        }
        foreach (var c in r.ForwardCases)
        {
            var ids = ReferenceData.Ints(c["input_ids"]);
            var mask = c["attention_mask"] is JsonArray ? ReferenceData.Ints(c["attention_mask"]) : null;
            using var scope = NewDisposeScope();
            var a = quantized.Forward(ReferenceModelTests.Tensor2(ids), mask is null ? null : ReferenceModelTests.Tensor2(mask));
            var b = dense.Forward(ReferenceModelTests.Tensor2(ids), mask is null ? null : ReferenceModelTests.Tensor2(mask));
            ReferenceModelTests.AssertClose(b.flatten().data<float>().Select(v => (double)v).ToArray(), a.flatten().data<float>().ToArray(), 1e-4, $"{name}/{c["name"]}");
        }
        var g = r.GenerateCases.First();
        Assert.Equal(ReferenceData.Greedy(dense, g), ReferenceData.Greedy(quantized, g));
    }

    [Theory]
    [InlineData("llama_bf16", "bfloat16", "int4", 32)]
    [InlineData("qwen2", "float32", "int8", -1)]
    public void Quantized_model_saves_as_compressed_tensors_and_loads_back_identically(string name, string dtype, string method, int groupSize)
    {
        var r = new ReferenceData(name);
        var quantized = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = dtype, Quantize = method, QuantizeGroupSize = groupSize });
        using var tmp = new TempDir();
        PreTrainedModel.SavePretrained(quantized, tmp.Path, new SaveOptions { MaxShardSize = "100KB" });
        var config = JsonNode.Parse(File.ReadAllText(tmp.File("config.json")))!["quantization_config"]!;
        Assert.Equal("compressed-tensors", config["quant_method"]!.GetValue<string>());
        Assert.Equal("pack-quantized", config["format"]!.GetValue<string>());
        Assert.Equal(method == "int4" ? 4 : 8, config["config_groups"]!["group_0"]!["weights"]!["num_bits"]!.GetValue<int>());
        Assert.Equal(groupSize > 0 ? "group" : "channel", config["config_groups"]!["group_0"]!["weights"]!["strategy"]!.GetValue<string>());
        Assert.Equal("lm_head", config["ignore"]![0]!.GetValue<string>());
        var reloaded = PreTrainedModel.FromPretrained(tmp.Path, new FromPretrainedOptions { DType = dtype });
        Assert.Equal(QuantizedLinears.Of(quantized).Count(), QuantizedLinears.Of(reloaded).Count(l => l.Linear.Quantized!.Packed is not null));
        var c = r.ForwardCases.First();
        var ids = ReferenceModelTests.Tensor2(ReferenceData.Ints(c["input_ids"]));
        Assert.Equal(quantized.Forward(ids).to(ScalarType.Float32).data<float>().ToArray(), reloaded.Forward(ids).to(ScalarType.Float32).data<float>().ToArray());
    }
}
