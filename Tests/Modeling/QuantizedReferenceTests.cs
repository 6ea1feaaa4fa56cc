using System.Text.Json.Nodes;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Modeling.Quantization;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// GPTQ, AWQ and compressed-tensors checkpoints written by the tools themselves (shared/hf-reference/quantized): loaded
/// packed, they give transformers' logits (1e-4), greedy tokens and per-module dequantized sums.
/// </summary>
public class QuantizedReferenceTests
{
    public static string Root => Path.Combine(TestPaths.HfReference, "quantized");

    public static TheoryData<string> Cases()
    {
        var d = new TheoryData<string>();
        foreach (var dir in Directory.GetDirectories(Root).Order(StringComparer.Ordinal)) d.Add(Path.GetFileName(dir));
        return d;
    }

    internal static ReferenceData Reference(string name) => new(name, Path.Combine(Root, name));

    internal static CausalLMModel Load(ReferenceData r) =>
        PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "float32" });

    [Theory]
    [MemberData(nameof(Cases))]
    public void Quantized_checkpoint_gives_hugging_face_logits(string name)
    {
        var r = Reference(name);
        var model = Load(r);
        Assert.Equal(((JsonObject)r.Json["quantized_modules"]!).Count, QuantizedLinears.Of(model).Count(l => l.Linear.Quantized!.Packed is not null));
        foreach (var c in r.ForwardCases)
        {
            var ids = ReferenceData.Ints(c["input_ids"]);
            var mask = c["attention_mask"] is JsonArray ? ReferenceData.Ints(c["attention_mask"]) : null;
            var pos = c["position_ids"] is JsonArray ? ReferenceData.Ints(c["position_ids"]) : null;
            using var scope = NewDisposeScope();
            var logits = model.Forward(ReferenceModelTests.Tensor2(ids), mask is null ? null : ReferenceModelTests.Tensor2(mask), pos is null ? null : ReferenceModelTests.Tensor2(pos));
            var expected = ReferenceData.Doubles(c["last_logits"]!);
            for (int b = 0; b < ids.Length; b++)
                ReferenceModelTests.AssertClose(expected[b], logits[b, ids[b].Length - 1].data<float>().ToArray(), 1e-4, $"{name}/{c["name"]} row {b}");
            if (c["logits_all"] is JsonArray all)
            {
                var rows = ReferenceData.Doubles(all[0]!);
                for (int t = 0; t < rows.Length; t++)
                    ReferenceModelTests.AssertClose(rows[t], logits[0, t].data<float>().ToArray(), 1e-4, $"{name}/{c["name"]} t={t}");
            }
        }
        foreach (var c in r.GenerateCases)
            Assert.Equal(ReferenceData.Ints(c["sequences"]), ReferenceData.Greedy(model, c));
        model.Release();
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Dequantized_modules_sum_as_the_tools_dequantize(string name)
    {
        var r = Reference(name);
        var model = Load(r);
        var modules = QuantizedLinears.Of(model).ToDictionary(l => l.Path, l => l.Linear);
        foreach (var (path, expected) in (JsonObject)r.Json["quantized_modules"]!)
        {
            using var w = modules[path].Quantized!.Packed!.Dequantize();
            var v = w.data<float>().ToArray();
            double sum = v.Sum(x => (double)x), abs = v.Sum(x => Math.Abs((double)x));
            double refSum = expected!["dequant_sum"]!.GetValue<double>(), refAbs = expected["dequant_abs_sum"]!.GetValue<double>();
            Assert.True(Math.Abs(sum - refSum) <= 1e-6 * refAbs, $"{name}/{path}: Σw {sum} vs {refSum}");
            Assert.True(Math.Abs(abs - refAbs) <= 1e-6 * refAbs, $"{name}/{path}: Σ|w| {abs} vs {refAbs}");
            var first = ((JsonArray)expected["dequant_first"]!).Select(x => (float)x!.GetValue<double>()).ToArray();
            Assert.Equal(first, v.Take(first.Length).ToArray());
        }
        model.Release();
    }

    [Theory]
    [InlineData("bitsandbytes")]
    [InlineData("hqq")]
    public void Unsupported_quant_method_is_refused_naming_config_json_and_the_field(string method)
    {
        using var tmp = new TempDir();
        string folder = ModelCopies.CopyModel(Path.Combine(Root, "gptq_4bit_perchannel"), tmp.Sub("m"));
        string config = Path.Combine(folder, "config.json");
        var json = JsonNode.Parse(File.ReadAllText(config))!;
        json["quantization_config"] = new JsonObject { ["quant_method"] = method, ["load_in_4bit"] = true };
        File.WriteAllText(config, json.ToJsonString());
        var ex = Assert.Throws<UnsupportedException>(() => PreTrainedModel.FromPretrained(folder));
        Assert.Contains("config.json", ex.Message);
        Assert.Contains("quantization_config.quant_method", ex.Message);
        Assert.Contains(method, ex.Message);
    }

    [Fact]
    public void Unsupported_gptq_option_is_refused_naming_the_field()
    {
        using var tmp = new TempDir();
        string folder = ModelCopies.CopyModel(Path.Combine(Root, "gptq_4bit_g32_sym"), tmp.Sub("m"));
        string config = Path.Combine(folder, "config.json");
        var json = JsonNode.Parse(File.ReadAllText(config))!;
        json["quantization_config"]!["checkpoint_format"] = "gptq_v2";
        File.WriteAllText(config, json.ToJsonString());
        var ex = Assert.Throws<UnsupportedException>(() => PreTrainedModel.FromPretrained(folder));
        Assert.Contains("quantization_config.checkpoint_format", ex.Message);
    }
}
