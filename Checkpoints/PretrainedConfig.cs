using System.Text.Json;
using System.Text.Json.Nodes;

namespace ShardPipe.Checkpoints;

/// <summary>
/// A model's <c>config.json</c>: typed accessors over the JSON object, which keeps every key it was given
/// (unknown ones included) so that saving it again loses nothing.
/// </summary>
public sealed class PretrainedConfig
{
    public JsonObject Values { get; }
    /// <summary>The file it came from, for error messages (null for a config built in code).</summary>
    public string? SourcePath { get; }

    public PretrainedConfig(JsonObject values, string? sourcePath = null)
    {
        Values = values;
        SourcePath = sourcePath;
    }

    public static PretrainedConfig Load(string path)
    {
        string text;
        try { text = File.ReadAllText(path); }
        catch (FileNotFoundException) { throw new CheckpointNotFoundException($"no config.json", new[] { path }); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointFormatException(path, null, $"cannot read: {ex.Message}", ex);
        }
        return Parse(path, text);
    }

    /// <summary>A config.json's text (read from <paramref name="path"/>, named in errors).</summary>
    public static PretrainedConfig Parse(string path, string text)
    {
        var node = StrictJson.Parse(path, text);
        if (node is not JsonObject obj) throw new CheckpointFormatException(path, null, "config is not a JSON object");
        return new PretrainedConfig(obj, path);
    }

    /// <summary>A model folder's config.json, under the same symlink rule as its shards (<see cref="CheckpointFiles.Resolve"/>).</summary>
    public static PretrainedConfig FromFolder(string folder) => Load(CheckpointFiles.Resolve(folder, CheckpointNames.Config));

    public PretrainedConfig Clone() => new((JsonObject)Values.DeepClone(), SourcePath);

    public string? ModelType => GetString("model_type");
    public IReadOnlyList<string> Architectures =>
        Values["architectures"] is JsonArray a
            ? a.Select(n => n is JsonValue v && v.TryGetValue(out string? s) ? s : throw new CheckpointFormatException(SourcePath ?? "config.json", null, $"architectures must be a list of class names, not {a.ToJsonString()}")).ToList()
            : Array.Empty<string>();
    public string? TorchDtype => GetString("torch_dtype");

    public bool Has(string key) => Values.TryGetPropertyValue(key, out var n) && n is not null;

    public string? GetString(string key) =>
        Values.TryGetPropertyValue(key, out var n) && n is JsonValue v && v.TryGetValue(out string? s) ? s : null;

    public long GetLong(string key, long? fallback = null)
    {
        if (Values.TryGetPropertyValue(key, out var n) && n is JsonValue v)
        {
            if (Number(v) is { } d && d == Math.Floor(d) && Math.Abs(d) < 9e15) return (long)d;
            throw Bad(key, "an integer", n);
        }
        return fallback ?? throw Missing(key);
    }

    public int GetInt(string key, int? fallback = null)
    {
        long v = GetLong(key, fallback);
        return v is >= int.MinValue and <= int.MaxValue ? (int)v : throw Bad(key, "an integer in the 32-bit range", Values[key]);
    }

    public long? GetLongOrNull(string key) => Has(key) ? GetLong(key) : null;

    public double GetDouble(string key, double? fallback = null)
    {
        if (Values.TryGetPropertyValue(key, out var n) && n is JsonValue v)
        {
            if (Number(v) is { } d) return d;
            throw Bad(key, "a number", n);
        }
        return fallback ?? throw Missing(key);
    }

    /// <summary>A JSON number however it is held (parsed text, or a C# int/long/double put in by code).</summary>
    private static double? Number(JsonValue v) =>
        v.GetValueKind() == JsonValueKind.Number &&
        double.TryParse(v.ToJsonString(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double d)
            ? d : null;

    public bool GetBool(string key, bool fallback)
    {
        if (Values.TryGetPropertyValue(key, out var n) && n is JsonValue v)
        {
            if (v.TryGetValue(out bool b)) return b;
            throw Bad(key, "true or false", n);
        }
        return fallback;
    }

    public JsonObject? GetObject(string key) => Values.TryGetPropertyValue(key, out var n) ? n as JsonObject : null;

    public void Set(string key, JsonNode? value) => Values[key] = value;

    private CheckpointFormatException Missing(string key) =>
        new(SourcePath ?? CheckpointNames.Config, null, $"missing required key '{key}'");

    private CheckpointFormatException Bad(string key, string expected, JsonNode? found) =>
        new(SourcePath ?? CheckpointNames.Config, null, $"'{key}' must be {expected}, found {found?.ToJsonString()}");

    /// <summary>Writes the config as Hugging Face does: sorted keys, two-space indent, trailing newline.</summary>
    public void Save(string path)
    {
        var sorted = Sort(Values)!;
        string json = sorted.ToJsonString(new JsonSerializerOptions
        {
            WriteIndented = true,
            Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        });
        File.WriteAllText(path, json + "\n");
    }

    private static JsonNode? Sort(JsonNode? node) => node switch
    {
        JsonObject o => new JsonObject(o.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => KeyValuePair.Create(kv.Key, Sort(kv.Value)))),
        JsonArray a => new JsonArray(a.Select(Sort).ToArray()),
        null => null,
        _ => node.DeepClone(),
    };
}
