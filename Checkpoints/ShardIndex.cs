using System.Text;
using System.Text.Json;

namespace ShardPipe.Checkpoints;

/// <summary>A parsed <c>model.safetensors.index.json</c>: total size and the tensor → shard file map.</summary>
public sealed class ShardIndex
{
    public long? TotalSize { get; }
    /// <summary>Tensor name → shard file name, in the order the file lists them.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> WeightMap { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    private ShardIndex(long? totalSize, List<KeyValuePair<string, string>> weightMap, Dictionary<string, string> metadata)
    {
        TotalSize = totalSize;
        WeightMap = weightMap;
        Metadata = metadata;
    }

    /// <summary>Shard file names, sorted.</summary>
    public IReadOnlyList<string> ShardFiles => WeightMap.Select(kv => kv.Value).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();

    public static ShardIndex Load(string path)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointFormatException(path, null, $"cannot read index: {ex.Message}", ex);
        }
        return Parse(path, bytes);
    }

    public static ShardIndex Parse(string path, ReadOnlySpan<byte> json)
    {
        long? total = null;
        var map = new List<KeyValuePair<string, string>>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        bool sawMap = false;
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { MaxDepth = 16 });
        try
        {
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
                throw new CheckpointFormatException(path, null, "index is not a JSON object");
            while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
            {
                string key = reader.GetString()!;
                reader.Read();
                if (key == "weight_map")
                {
                    if (reader.TokenType != JsonTokenType.StartObject)
                        throw new CheckpointFormatException(path, null, "'weight_map' must be an object");
                    sawMap = true;
                    while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
                    {
                        string tensor = reader.GetString()!;
                        reader.Read();
                        if (reader.TokenType != JsonTokenType.String)
                            throw new CheckpointFormatException(path, tensor, "'weight_map' value must be a shard file name");
                        string file = reader.GetString()!;
                        if (!seen.Add(tensor))
                            throw new CheckpointFormatException(path, tensor, "tensor is listed twice in 'weight_map'");
                        ValidateShardName(path, tensor, file);
                        map.Add(new(tensor, file));
                    }
                }
                else if (key == "metadata")
                {
                    if (reader.TokenType != JsonTokenType.StartObject)
                        throw new CheckpointFormatException(path, null, "'metadata' must be an object");
                    while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
                    {
                        string mk = reader.GetString()!;
                        reader.Read();
                        if (mk == "total_size")
                        {
                            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetDouble(out double d) || d < 0 || d != Math.Floor(d))
                                throw new CheckpointFormatException(path, null, "'metadata.total_size' must be a non-negative integer");
                            total = (long)d;
                        }
                        else if (reader.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray) reader.Skip();
                        else metadata[mk] = reader.TokenType == JsonTokenType.String ? reader.GetString()! : Encoding.UTF8.GetString(reader.ValueSpan);
                    }
                }
                else reader.Skip();
            }
        }
        catch (JsonException ex)
        {
            throw new CheckpointFormatException(path, null, $"index is not valid JSON ({ex.Message})", ex);
        }
        catch (InvalidOperationException ex)
        {
            throw new CheckpointFormatException(path, null, $"index is not valid JSON ({ex.Message})", ex);
        }
        if (!sawMap) throw new CheckpointFormatException(path, null, "index has no 'weight_map'");
        return new ShardIndex(total, map, metadata);
    }

    /// <summary>A shard must be a plain file name inside the model folder: no '..', no separators, not absolute.</summary>
    private static void ValidateShardName(string path, string tensor, string file)
    {
        if (file.Length == 0 || file == "." || file == ".." || file.Contains('/') || file.Contains('\\') ||
            file.Contains('\0') || Path.IsPathRooted(file) || file.Contains("..", StringComparison.Ordinal))
            throw new CheckpointFormatException(path, tensor, $"shard '{file}' is not a plain file name inside the model folder");
    }

    /// <summary>Writes an index as save_pretrained does: <c>json.dumps(index, indent=2, sort_keys=True) + "\n"</c>.</summary>
    public static void Write(string path, long totalSize, IEnumerable<KeyValuePair<string, string>> weightMap)
    {
        var sb = new StringBuilder();
        sb.Append("{\n  \"metadata\": {\n    \"total_size\": ").Append(totalSize).Append("\n  },\n  \"weight_map\": {");
        bool first = true;
        foreach (var (k, v) in weightMap.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            sb.Append(first ? "\n    " : ",\n    ");
            first = false;
            JsonText.AppendString(sb, k, asciiOnly: true);
            sb.Append(": ");
            JsonText.AppendString(sb, v, asciiOnly: true);
        }
        sb.Append(first ? "}\n}\n" : "\n  }\n}\n");
        File.WriteAllText(path, sb.ToString());
    }
}
