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

    [Fact]
    public void Generate_with_quantize_on_an_embedded_cluster_gives_the_one_process_tokens()
    {
        string[] Args(params string[] extra) => new[] { "generate", "--model", TestPaths.Model("llama_untied"), "--input-ids", "5,17,42,9", "--max-new-tokens", "8",
            "--ignore-eos", "--quantize", "int4", "--quantize-group-size", "32", "--json" }.Concat(extra).ToArray();
        var local = ShardPipeProcess.Run(Args());
        Assert.True(local.ExitCode == 0, local.Stderr);
        var cluster = ShardPipeProcess.Run(Args("--cluster", "embedded:3"));
        Assert.True(cluster.ExitCode == 0, cluster.Stderr);
        string Sequences(string stdout) => JsonNode.Parse(stdout)!["sequences"]!.ToJsonString();
        Assert.Equal(Sequences(local.Stdout), Sequences(cluster.Stdout));

        var bad = ShardPipeProcess.Run("generate", "--model", TestPaths.Model("llama_untied"), "--input-ids", "5,17", "--quantize", "int4", "--quantize-group-size", "0", "--cluster", "embedded:2");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("quantize group size 0", bad.Stderr);
    }

    /// <summary><c>bench quant-kernels</c> refuses a prefill of fewer than 2 rows (or no rounds) with a typed error naming the option, before generating or loading anything.</summary>
    [Fact]
    public void Bench_quant_kernels_refuses_bad_options_naming_them()
    {
        foreach (var args in new[] { new[] { "--prefill-rows", "1" }, new[] { "--rounds", "0" } })
        {
            var r = ShardPipeProcess.Run(new[] { "bench", "quant-kernels" }.Concat(args).Append("--json").ToArray());
            Assert.NotEqual(0, r.ExitCode);
            var error = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("error:", StringComparison.Ordinal));
            Assert.Contains(args[0], error);
            Assert.DoesNotContain("generating", r.Stderr);
        }
    }
}
