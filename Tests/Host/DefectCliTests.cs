using System.Diagnostics;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>Defects found in review, each pinned by the real <c>shardpipe</c> process or the public API.</summary>
public class DefectCliTests
{
    [Fact]
    public void Save_with_dtype_auto_keeps_the_stored_dtype()
    {
        using var tmp = new TempDir();
        var r = ShardPipeProcess.Run("save", "--model", TestPaths.Model("llama_fp16"), "--out", tmp.Path, "--dtype", "auto", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var saved = Checkpoint.Open(tmp.Path);
        Assert.All(saved.Tensors, t => Assert.Equal(DType.F16, t.Info.DType));
        using var original = Checkpoint.Open(TestPaths.Model("llama_fp16"));
        Assert.Equal(original.Tensors.Count, saved.Tensors.Count);
    }

    [Fact]
    public void Use_safetensors_false_is_a_typed_error_naming_the_folder()
    {
        string folder = TestPaths.Model("llama_untied");
        var missing = Assert.Throws<CheckpointNotFoundException>(() => PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { UseSafetensors = false }));
        Assert.Contains(folder, missing.Message);
        Assert.Contains("pytorch_model.bin", missing.Message);

        using var tmp = new TempDir();
        foreach (var f in Directory.GetFiles(folder)) File.Copy(f, tmp.File(Path.GetFileName(f)));
        File.WriteAllBytes(tmp.File("pytorch_model.bin"), new byte[] { 0x80, 0x02 });
        var pickle = Assert.Throws<UnsupportedException>(() => PreTrainedModel.FromPretrained(tmp.Path, new FromPretrainedOptions { UseSafetensors = false }));
        Assert.Contains("pickled", pickle.Message);
        Assert.NotNull(PreTrainedModel.FromPretrained(tmp.Path)); // the default still reads the safetensors beside it
    }

    [Fact]
    public void A_prompt_longer_than_the_models_positions_is_refused()
    {
        string ids = string.Join(",", Enumerable.Range(0, 300).Select(i => i % 200 + 2));
        var r = ShardPipeProcess.Run("forward", "--model", TestPaths.Model("llama_untied"), "--input-ids", ids, "--json");
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("error: --input-ids: the prompt has 300 tokens; the model takes at most 256 positions", r.LastMessageLine);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("embedded:2")]
    public void A_prompt_plus_max_new_tokens_past_the_positions_is_refused_in_one_process_and_on_a_cluster(string? cluster)
    {
        var args = new List<string> { "generate", "--model", TestPaths.Model("llama_untied"), "--input-ids", "5,17,42", "--max-new-tokens", "254", "--json" };
        if (cluster is not null) args.AddRange(new[] { "--cluster", cluster });
        var r = ShardPipeProcess.Run(args.ToArray());
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("the prompt has 3 tokens and max_new_tokens asks for 254 more (257); the model takes at most 256 positions", r.LastMessageLine);
    }

    [Fact]
    public void A_cuda_device_on_a_build_without_cuda_is_refused_promptly_naming_node_and_device()
    {
        var clock = Stopwatch.StartNew();
        var r = ShardPipeProcess.Run("forward", "--model", TestPaths.Model("llama_untied"), "--input-ids", "5,17,42",
            "--cluster", "embedded:2", "--nodes", "node-1/cpu=1GiB,node-2/cuda:0=1GiB", "--json");
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("", r.Stdout.Trim());
        Assert.Equal("error: node-2: cuda:0 requested, but this build has no CUDA", r.LastMessageLine);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"took {clock.Elapsed.TotalSeconds:0} s");
    }
}

/// <summary>Configs beyond sanity limits are refused before anything is built: exit 2, quickly, naming file and field.</summary>
public class ConfigLimitCliTests
{
    [Theory]
    [InlineData("llama_untied", "num_hidden_layers", "1000000000", "num_hidden_layers 1000000000 is outside the supported range 1..1024")]
    [InlineData("gpt2", "n_positions", "1000000", "n_positions 1000000 is outside the supported range 1..32768")]
    [InlineData("llama_untied", "hidden_size", "4294967296", "hidden_size 4294967296 is outside")]
    [InlineData("llama_untied", "vocab_size", "-5", "vocab_size -5 is outside")]
    [InlineData("llama_untied", "architectures", "[1]", "architectures must be a list of class names")]
    public void Inspect_and_plan_refuse_configs_beyond_limits(string model, string field, string value, string expect)
    {
        using var tmp = new TempDir();
        foreach (var f in Directory.GetFiles(TestPaths.Model(model))) File.Copy(f, tmp.File(Path.GetFileName(f)));
        var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.Model(model), "config.json")))!.AsObject();
        config[field] = System.Text.Json.Nodes.JsonNode.Parse(value);
        File.WriteAllText(tmp.File("config.json"), config.ToJsonString());
        foreach (var args in new[] { new[] { "plan", "--model", tmp.Path, "--device-map", "auto", "--json" }, new[] { "inspect", "--model", tmp.Path, "--json" } })
        {
            var clock = Stopwatch.StartNew();
            var r = ShardPipeProcess.Run(args);
            Assert.Equal(2, r.ExitCode);
            string last = r.LastMessageLine;
            Assert.StartsWith("error: config.json: ", last);
            Assert.Contains(expect, last);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60));
        }
    }
}
