using System.Text.Json.Nodes;

namespace ShardPipe.Host.Cli;

/// <summary>JSON shapes shared by several commands.</summary>
public static class HostJson
{
    /// <summary>hf_device_map as an ordered object; integer GPU indices stay ints, as Accelerate writes them.</summary>
    public static JsonObject DeviceMap(IEnumerable<KeyValuePair<string, string>> map)
    {
        var o = new JsonObject();
        foreach (var (k, v) in map)
            o[k] = int.TryParse(v, out int i) ? JsonValue.Create(i) : JsonValue.Create(v);
        return o;
    }

    public static JsonArray Rows(long[][] rows) =>
        new(rows.Select(r => (JsonNode)new JsonArray(r.Select(v => (JsonNode)JsonValue.Create(v)!).ToArray())).ToArray());
}
