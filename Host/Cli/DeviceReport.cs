using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;

namespace ShardPipe.Host.Cli;

/// <summary>A cluster's devices and device map as <c>load</c> and <c>status</c> print them: JSON, or a table.</summary>
public static class DeviceReport
{
    public static JsonArray Json(IEnumerable<DeviceUsage> devices) =>
        new(devices.Select(d => (JsonNode)new JsonObject
        {
            ["device"] = d.Device, ["bytes"] = d.PlannedBytes, ["loaded_bytes"] = d.LoadedBytes, ["budget"] = d.BudgetBytes, ["streamed"] = d.Streamed,
            ["kv_bytes_per_token"] = d.KvBytesPerToken, ["kv_budget"] = d.KvBudgetBytes, ["kv_reserved"] = d.KvReservedBytes,
        }).ToArray());

    public static void Print(string headline, IEnumerable<DeviceUsage> devices, IEnumerable<DeviceMapEntry> map)
    {
        Tables.Line(headline);
        Tables.Print(new[] { "device", "planned>", "loaded>", "budget>", "kv budget>", "kv reserved>", "" },
            devices.Select(d => new[] { d.Device, ByteSize.Format(d.PlannedBytes), ByteSize.Format(d.LoadedBytes), ByteSize.Format(d.BudgetBytes),
                d.KvBudgetBytes > 0 ? ByteSize.Format(d.KvBudgetBytes) : "", d.KvBudgetBytes > 0 ? ByteSize.Format(d.KvReservedBytes) : "", d.Streamed ? "streamed" : "" }));
        var entries = map.ToList();
        if (entries.Count > 0)
            Tables.Print(new[] { "module", "device" }, entries.Select(e => new[] { e.Module.Length == 0 ? "(whole model)" : e.Module, e.Device }), "hf_device_map");
    }
}
