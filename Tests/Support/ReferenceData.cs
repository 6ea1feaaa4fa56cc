using System.Text.Json.Nodes;

namespace ShardPipe.Tests.Support;

/// <summary>Reads a reference.json written by transformers (see shared/hf-reference/README.md).</summary>
public sealed class ReferenceData
{
    public string Name { get; }
    public string Folder { get; }
    public JsonNode Json { get; }

    public ReferenceData(string name)
    {
        Name = name;
        Folder = TestPaths.Model(name);
        Json = JsonNode.Parse(File.ReadAllText(Path.Combine(Folder, "reference.json")))!;
    }

    public string? Variant => Json["variant"]?.GetValue<string>();
    public IEnumerable<JsonNode> ForwardCases => ((JsonArray)Json["forward"]!).Select(n => n!);
    public IEnumerable<JsonNode> GenerateCases => ((JsonArray)Json["generate"]!).Select(n => n!);

    public static long[][] Ints(JsonNode? node) =>
        node is JsonArray a ? a.Select(r => ((JsonArray)r!).Select(x => x!.GetValue<long>()).ToArray()).ToArray() : null!;

    public static double[][] Doubles(JsonNode node) =>
        ((JsonArray)node).Select(r => ((JsonArray)r!).Select(x => x!.GetValue<double>()).ToArray()).ToArray();

    public static string Csv(long[][] rows) => string.Join(";", rows.Select(r => string.Join(",", r)));
}
