using System.Text.Json.Nodes;
using ShardPipe.Tests.Modeling;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>The real <c>shardpipe inspect --flops BxT</c> on every case of transformers' utilities.json.</summary>
public class InspectFlopsCliTests
{
    [Theory]
    [MemberData(nameof(FloatingPointOpsTests.UtilityCases), MemberType = typeof(FloatingPointOpsTests))]
    public void Inspect_flops_gives_transformers_figures(string model, long batch, long length, long tokens, long flops, long flopsWithEmbeddings)
    {
        var r = new ReferenceData(model);
        var args = new List<string> { "inspect", "--model", r.Folder, "--flops", $"{batch}x{length}", "--json" };
        if (r.Variant is { } v) args.AddRange(new[] { "--variant", v });
        var run = ShardPipeProcess.Run(args.ToArray());
        Assert.True(run.ExitCode == 0, run.Stderr);
        var json = JsonNode.Parse(Assert.Single(run.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries)))!;
        Assert.Equal(new[] { batch, length }, ((JsonArray)json["flops_input_shape"]!).Select(d => d!.GetValue<long>()));
        Assert.Equal(tokens, json["estimate_tokens"]!.GetValue<long>());
        Assert.Equal(flops, json["floating_point_ops"]!.GetValue<long>());
        Assert.Equal(flopsWithEmbeddings, json["floating_point_ops_with_embeddings"]!.GetValue<long>());
    }

    [Fact]
    public void Inspect_flops_counts_a_pruned_model_and_prints_a_row_without_json()
    {
        var json = JsonNode.Parse(ShardPipeProcess.Run("inspect", "--model", TestPaths.PrunedGpt2, "--flops", "2x100", "--json").Stdout)!;
        var pruned = new ReferenceData("gpt2_pruned", TestPaths.PrunedGpt2).Json;
        Assert.Equal("{\"0\":[1,2],\"1\":[0]}", json["config"]!["pruned_heads"]!.ToJsonString());
        Assert.Equal(pruned["num_parameters"]!.GetValue<long>(), json["num_parameters"]!.GetValue<long>());
        Assert.Equal(6 * 200 * pruned["num_parameters_exclude_embeddings"]!.GetValue<long>(), json["floating_point_ops"]!.GetValue<long>());
        Assert.Equal(6 * 200 * pruned["num_parameters"]!.GetValue<long>(), json["floating_point_ops_with_embeddings"]!.GetValue<long>());

        var text = ShardPipeProcess.Run("inspect", "--model", TestPaths.PrunedGpt2, "--flops", "2x100");
        Assert.Equal(0, text.ExitCode);
        Assert.Matches($@"\|\s*estimate_tokens\s*\|\s*200 \(input_ids 2x100\)", text.Stdout);
        Assert.Matches($@"\|\s*floating_point_ops\s*\|\s*{json["floating_point_ops"]} \({json["floating_point_ops_with_embeddings"]} with embeddings\)", text.Stdout);
    }

    [Theory]
    [InlineData("3")]
    [InlineData("3x")]
    [InlineData("0x5")]
    [InlineData("2x3x4")]
    [InlineData("-1x5")]
    [InlineData("ax5")]
    public void A_bad_flops_shape_exits_2_with_one_line(string shape)
    {
        var r = ShardPipeProcess.Run("inspect", "--model", TestPaths.Model("gpt2"), "--flops", shape, "--json");
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("", r.Stdout);
        var line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"error: --flops '{shape}'", line);
    }
}
