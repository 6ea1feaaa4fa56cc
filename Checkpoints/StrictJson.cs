using System.Text.Json;
using System.Text.Json.Nodes;

namespace ShardPipe.Checkpoints;

/// <summary>
/// The one reading of JSON files that come from outside (config.json, generation_config.json, the tokenizer files):
/// invalid JSON and duplicate keys are a <see cref="CheckpointFormatException"/> naming the file. (A duplicate key would
/// otherwise surface later as an untyped error on first access to the object; Python keeps the last one silently.)
/// </summary>
public static class StrictJson
{
    private static readonly JsonDocumentOptions Options = new() { AllowTrailingCommas = false, AllowDuplicateProperties = false };

    public static JsonNode? Parse(string path, string text)
    {
        try { return JsonNode.Parse(text, documentOptions: Options); }
        catch (JsonException ex) { throw new CheckpointFormatException(path, null, $"not valid JSON ({ex.Message})", ex); }
    }
}
