using System.Text.Json.Nodes;
using ShardPipe.Tests.Checkpoints;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>The real <c>shardpipe inspect</c> process on the reference checkpoints, a hub cache, and broken copies.</summary>
public class InspectCliTests
{
    [Theory]
    [MemberData(nameof(ShardingTests.ReferenceModels), MemberType = typeof(ShardingTests))]
    public void Inspect_lists_every_tensor_with_dtype_shape_and_shard(string model)
    {
        string folder = TestPaths.Model(model);
        var reference = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "reference.json")))!;
        string? variant = reference["variant"]?.GetValue<string>();
        var args = new List<string> { "inspect", "--model", folder, "--tensors", "--json" };
        if (variant is not null) args.AddRange(new[] { "--variant", variant });
        var r = ShardPipeProcess.Run(args.ToArray());
        Assert.True(r.ExitCode == 0, r.Stderr);
        var lines = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        var json = JsonNode.Parse(lines[0])!;

        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, reference["index_file"]!.GetValue<string>())))!;
        var weightMap = (JsonObject)index["weight_map"]!;
        var keys = ((JsonArray)reference["checkpoint_keys"]!).Select(k => k!.GetValue<string>()).ToList();
        var stats = (JsonObject)reference["tensor_stats_float32"]!;
        string code = reference["saved_dtype"]!.GetValue<string>() switch { "float32" => "F32", "float16" => "F16", "bfloat16" => "BF16", var s => s };

        Assert.Equal(reference["model_class"]!.GetValue<string>(), json["architecture"]!.GetValue<string>());
        Assert.Equal(keys.Count, json["num_tensors"]!.GetValue<int>());
        Assert.Equal(index["metadata"]!["total_size"]!.GetValue<long>(), json["total_bytes"]!.GetValue<long>());
        Assert.Equal(((JsonArray)reference["shard_files"]!).Select(s => s!.GetValue<string>()), ((JsonArray)json["shards"]!).Select(s => s!.GetValue<string>()));
        Assert.Equal(new[] { code }, ((JsonArray)json["dtypes"]!).Select(s => s!.GetValue<string>()));
        var tensors = (JsonArray)json["tensors"]!;
        Assert.Equal(keys.Order(StringComparer.Ordinal), tensors.Select(t => t!["name"]!.GetValue<string>()).Order(StringComparer.Ordinal));
        foreach (var t in tensors)
        {
            string name = t!["name"]!.GetValue<string>();
            Assert.Equal(code, t["dtype"]!.GetValue<string>());
            Assert.Equal(weightMap[name]!.GetValue<string>(), t["shard"]!.GetValue<string>());
            Assert.Equal(((JsonArray)stats[name]!["shape"]!).Select(d => d!.GetValue<long>()), ((JsonArray)t["shape"]!).Select(d => d!.GetValue<long>()));
        }
    }

    [Fact]
    public void Inspect_accepts_a_repo_id_from_the_hub_cache()
    {
        using var tmp = new TempDir();
        CheckpointLayoutTests.MakeHubCache(tmp.Path, "tiny/gpt2", "gpt2");
        var r = ShardPipeProcess.Run(new Dictionary<string, string> { ["HF_HUB_CACHE"] = tmp.Path }, "inspect", "--model", "tiny/gpt2", "--json", "--tensors");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = JsonNode.Parse(r.Stdout)!;
        Assert.Equal("GPT2LMHeadModel", json["architecture"]!.GetValue<string>());
        Assert.Equal(28, ((JsonArray)json["tensors"]!).Count);
        var viaHome = ShardPipeProcess.Run(new Dictionary<string, string> { ["HF_HOME"] = Path.GetDirectoryName(tmp.Path)!, ["HF_HUB_CACHE"] = "" },
            "inspect", "--model", "tiny/gpt2", "--revision", "nope");
        Assert.Equal(2, viaHome.ExitCode);
        Assert.Contains("not found locally", viaHome.Stderr);
    }

    [Fact]
    public void Broken_copies_fail_with_one_line_naming_the_file_and_tensor()
    {
        using var tmp = new TempDir();
        string folder = ModelCopies.CopyModel(TestPaths.Model("qwen2"), tmp.Sub("qwen2"));
        string shard = Path.Combine(folder, "model-00003-of-00004.safetensors");
        var bytes = File.ReadAllBytes(shard);
        int headerLen = (int)BitConverter.ToUInt64(bytes, 0);
        string header = System.Text.Encoding.UTF8.GetString(bytes, 8, headerLen);
        int at = header.IndexOf("\"F32\"", StringComparison.Ordinal);
        System.Text.Encoding.UTF8.GetBytes("\"F31\"").CopyTo(bytes, 8 + at);
        File.WriteAllBytes(shard, bytes);

        var r = ShardPipeProcess.Run("inspect", "--model", folder, "--json");
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("", r.Stdout);
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Contains("model-00003-of-00004.safetensors", lines[0]);
        Assert.Contains("unknown dtype 'F31'", lines[0]);
        Assert.Matches("'[a-z0-9_.]+'", lines[0]);

        var verbose = ShardPipeProcess.Run("inspect", "--model", folder, "--verbose");
        Assert.Equal(2, verbose.ExitCode);
        Assert.Contains("at ShardPipe.", verbose.Stderr);
    }

    [Fact]
    public void Demo_runs_a_generated_model_across_three_embedded_nodes()
    {
        using var tmp = new TempDir();
        var r = ShardPipeProcess.Run("demo", "--dir", tmp.Path, "--max-new-tokens", "6", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Single(r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        var json = JsonNode.Parse(r.Stdout)!;
        var nodes = ((JsonObject)json["hf_device_map"]!).Select(kv => kv.Value!.GetValue<string>().Split('/')[0]).Distinct().Order();
        Assert.Equal(new[] { "node-1", "node-2", "node-3" }, nodes);
        Assert.Equal(6, ((JsonArray)json["tokens"]!).Count);
        Assert.True(json["tokens_per_s"]!.GetValue<double>() > 0);
        Assert.True(Directory.GetFiles(tmp.Path, "model-*.safetensors").Length > 1);
    }
}
