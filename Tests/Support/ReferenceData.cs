using System.Text.Json.Nodes;

namespace ShardPipe.Tests.Support;

/// <summary>Reads a reference.json written by transformers (see shared/hf-reference/README.md).</summary>
public sealed class ReferenceData
{
    public string Name { get; }
    public string Folder { get; }
    public JsonNode Json { get; }

    public ReferenceData(string name) : this(name, TestPaths.Model(name)) { }

    public ReferenceData(string name, string folder)
    {
        Name = name;
        Folder = folder;
        Json = JsonNode.Parse(File.ReadAllText(Path.Combine(Folder, "reference.json")))!;
    }

    public string? Variant => Json["variant"]?.GetValue<string>();
    public IEnumerable<JsonNode> ForwardCases => ((JsonArray)Json["forward"]!).Select(n => n!);
    public IEnumerable<JsonNode> GenerateCases => ((JsonArray)Json["generate"]!).Select(n => n!);

    public static long[][] Ints(JsonNode? node) =>
        node is JsonArray a ? a.Select(r => ((JsonArray)r!).Select(x => x!.GetValue<long>()).ToArray()).ToArray() : null!;

    public static double[][] Doubles(JsonNode node) =>
        ((JsonArray)node).Select(r => ((JsonArray)r!).Select(x => x!.GetValue<double>()).ToArray()).ToArray();

    /// <summary>A generate case run greedily as transformers ran it (its max_new_tokens, eos and pad ids); the full sequences.</summary>
    public static long[][] Greedy(ShardPipe.Modeling.Models.CausalLMModel model, JsonNode c)
    {
        var kw = c["generation_kwargs"]!;
        var mask = c["attention_mask"] is JsonArray ? Ints(c["attention_mask"]) : null;
        return ShardPipe.Modeling.Generation.TokenGenerator.Greedy(model, Ints(c["input_ids"]), mask, new ShardPipe.Modeling.Generation.GenerationOptions
        {
            MaxNewTokens = kw["max_new_tokens"]!.GetValue<int>(),
            EosTokenIds = new[] { kw["eos_token_id"]!.GetValue<long>() },
            PadTokenId = kw["pad_token_id"]!.GetValue<long>(),
        }).Sequences;
    }

    public static string Csv(long[][] rows) => string.Join(";", rows.Select(r => string.Join(",", r)));
}
