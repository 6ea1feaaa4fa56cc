using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary><c>estimate_tokens</c> and <c>floating_point_ops</c> against transformers' <c>utilities.json</c>.</summary>
public class FloatingPointOpsTests
{
    /// <summary>Every case of utilities.json: model, input shape, and transformers' three figures.</summary>
    public static TheoryData<string, long, long, long, long, long> UtilityCases()
    {
        var data = new TheoryData<string, long, long, long, long, long>();
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.HfReference, "utilities.json")))!;
        foreach (var c in (JsonArray)json["cases"]!)
        {
            var shape = ((JsonArray)c!["input_shape"]!).Select(d => d!.GetValue<long>()).ToArray();
            data.Add(c["model"]!.GetValue<string>(), shape[0], shape[1], c["estimate_tokens"]!.GetValue<long>(),
                c["floating_point_ops"]!.GetValue<long>(), c["floating_point_ops_with_embeddings"]!.GetValue<long>());
        }
        return data;
    }

    [Fact]
    public void Utilities_cover_every_reference_model_at_three_shapes()
    {
        var cases = UtilityCases().Select(row => (string)row[0]).ToList();
        Assert.Equal(TestPaths.ModelNames.Order(StringComparer.Ordinal), cases.Distinct().Order(StringComparer.Ordinal));
        Assert.All(cases.GroupBy(c => c), g => Assert.Equal(3, g.Count()));
    }

    [Theory]
    [MemberData(nameof(UtilityCases))]
    public void The_meta_model_gives_transformers_estimate_and_flops(string model, long batch, long length, long tokens, long flops, long flopsWithEmbeddings)
    {
        var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(TestPaths.Model(model)));
        var inputs = new Dictionary<string, long[]> { ["input_ids"] = new[] { batch, length } };
        Assert.Equal(tokens, meta.EstimateTokens(inputs));
        Assert.Equal(flops, meta.FloatingPointOps(inputs));
        Assert.Equal(flops, meta.FloatingPointOps(inputs, excludeEmbeddings: true));
        Assert.Equal(flopsWithEmbeddings, meta.FloatingPointOps(inputs, excludeEmbeddings: false));
    }

    [Fact]
    public void A_loaded_model_counts_its_input_tensors_and_a_pruned_one_its_pruned_parameters()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("gpt2"));
        using var ids = ones(new long[] { 3, 16 }, ScalarType.Int64);
        using var mask = ones(new long[] { 3, 16 }, ScalarType.Int64);
        var inputs = new Dictionary<string, Tensor> { ["input_ids"] = ids, ["attention_mask"] = mask };
        Assert.Equal(48, model.EstimateTokens(inputs));
        Assert.Equal(6 * 48 * model.NumParameters(excludeEmbeddings: true), model.FloatingPointOps(inputs));
        Assert.Equal(6 * 48 * model.NumParameters(), model.FloatingPointOps(inputs, excludeEmbeddings: false));

        model.PruneHeads(new Dictionary<int, int[]> { [0] = new[] { 1, 2 }, [1] = new[] { 0 } });
        var pruned = new ReferenceData("gpt2_pruned", TestPaths.PrunedGpt2);
        Assert.Equal(6 * 48 * pruned.Json["num_parameters_exclude_embeddings"]!.GetValue<long>(), model.FloatingPointOps(inputs));
        Assert.Equal(6 * 48 * pruned.Json["num_parameters"]!.GetValue<long>(), model.FloatingPointOps(inputs, excludeEmbeddings: false));
    }

    [Fact]
    public void Without_input_ids_the_estimate_is_zero_with_one_warning()
    {
        var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(TestPaths.Model("llama_tied")));
        var log = new ListLogger();
        var inputs = new Dictionary<string, long[]> { ["inputs_embeds"] = new long[] { 2, 5, 64 } };
        Assert.Equal(0, meta.EstimateTokens(inputs, log));
        Assert.Equal(0, meta.FloatingPointOps(inputs, logger: log));
        Assert.Equal(new[] { "Could not estimate the number of tokens of the input, floating-point operations will not be computed" }, log.Messages);
    }

    [Fact]
    public void Sizes_beyond_64_bits_are_refused()
    {
        var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(TestPaths.Model("gpt2")));
        Assert.Throws<InvalidInputException>(() => meta.EstimateTokens(new Dictionary<string, long[]> { ["input_ids"] = new[] { long.MaxValue / 2, 3L } }));
        Assert.Throws<InvalidInputException>(() => meta.FloatingPointOps(new Dictionary<string, long[]> { ["input_ids"] = new[] { 1L << 40, 1L << 10 } }));
        Assert.Throws<InvalidInputException>(() => meta.EstimateTokens(new Dictionary<string, long[]> { ["input_ids"] = new[] { -1L, 3L } }));
    }

    private sealed class ListLogger : ILogger
    {
        public List<string> Messages { get; } = new();
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Messages.Add(formatter(state, exception));
    }
}
