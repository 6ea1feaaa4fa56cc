using System.Text.Json.Nodes;
using ShardPipe.Tests.Modeling;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>The CLI with quantized checkpoints: unsupported methods exit 2 naming the field, inspect shows the scheme, save --quantize writes compressed-tensors.</summary>
public class QuantizedCliTests
{
    [Theory]
    [InlineData("bitsandbytes")]
    [InlineData("hqq")]
    public void Unsupported_quant_method_exits_2_naming_config_json_and_the_field(string method)
    {
        using var tmp = new TempDir();
        string folder = ModelCopies.CopyModel(Path.Combine(QuantizedReferenceTests.Root, "gptq_4bit_perchannel"), tmp.Sub("m"));
        string config = Path.Combine(folder, "config.json");
        var json = JsonNode.Parse(File.ReadAllText(config))!;
        json["quantization_config"] = new JsonObject { ["quant_method"] = method };
        File.WriteAllText(config, json.ToJsonString());
        var r = ShardPipeProcess.Run("forward", "--model", folder, "--input-ids", "1,2,3");
        Assert.Equal(2, r.ExitCode);
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var error = Assert.Single(lines, l => l.StartsWith("error:", StringComparison.Ordinal));
        Assert.Contains("config.json", error);
        Assert.Contains("quantization_config.quant_method", error);
        Assert.Contains(method, error);
    }

    [Fact]
    public void Inspect_shows_the_quantization_and_save_quantize_writes_compressed_tensors()
    {
        var inspect = ShardPipeProcess.Run("inspect", "--model", Path.Combine(QuantizedReferenceTests.Root, "gptq_4bit_g32_asym_actorder"), "--json");
        Assert.True(inspect.ExitCode == 0, inspect.Stderr);
        var q = JsonNode.Parse(inspect.Stdout)!["quantization"]!;
        Assert.Equal("gptq", q["quant_method"]!.GetValue<string>());
        Assert.Equal(4, q["bits"]!.GetValue<int>());
        Assert.True(q["desc_act"]!.GetValue<bool>());
        Assert.Equal(14, q["quantized_modules"]!.GetValue<int>());

        using var tmp = new TempDir();
        var save = ShardPipeProcess.Run("save", "--model", TestPaths.Model("llama_untied"), "--out", tmp.Path, "--quantize", "int8", "--quantize-group-size", "32");
        Assert.True(save.ExitCode == 0, save.Stderr);
        var saved = ShardPipeProcess.Run("inspect", "--model", tmp.Path, "--json");
        Assert.True(saved.ExitCode == 0, saved.Stderr);
        var sq = JsonNode.Parse(saved.Stdout)!["quantization"]!;
        Assert.Equal("compressed-tensors", sq["quant_method"]!.GetValue<string>());
        Assert.Equal("pack-quantized", sq["format"]!.GetValue<string>());
        Assert.Equal(8, sq["bits"]!.GetValue<int>());
        Assert.Equal(32, sq["group_size"]!.GetValue<int>());
        Assert.Equal(14, sq["quantized_modules"]!.GetValue<int>());
    }
}
