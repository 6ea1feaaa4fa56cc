using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// A request's worst case of KV-cache bytes on each device of the served model (pure): rows × (prompt + max new
/// tokens) × the bytes one token takes on that device's layers. Admission reserves it; the server checks it before
/// sending a request that could never fit.
/// </summary>
public static class KvDemand
{
    /// <summary>Bytes per device for <paramref name="rows"/> rows of <paramref name="tokens"/> positions each; null when the model reports no KV figures.</summary>
    public static IReadOnlyDictionary<string, long>? Of(IReadOnlyList<DeviceUsage> devices, long rows, long tokens)
    {
        var demand = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var d in devices)
            if (d.KvBytesPerToken > 0)
                demand[d.Device] = checked(rows * tokens * d.KvBytesPerToken);
        return demand.Count == 0 ? null : demand;
    }

    /// <summary>The devices' KV budgets (those that have one).</summary>
    public static IReadOnlyDictionary<string, long> Budgets(IReadOnlyList<DeviceUsage> devices) =>
        devices.Where(d => d.KvBytesPerToken > 0 && d.KvBudgetBytes > 0).ToDictionary(d => d.Device, d => d.KvBudgetBytes, StringComparer.Ordinal);

    /// <summary>Why the worst case could never fit, even alone (a device and its figures), or null.</summary>
    public static string? NeverFits(IReadOnlyList<DeviceUsage> devices, long rows, long tokens)
    {
        foreach (var d in devices)
            if (d.KvBytesPerToken > 0 && d.KvBudgetBytes > 0 && rows * tokens * d.KvBytesPerToken > d.KvBudgetBytes)
                return $"{rows} row(s) of up to {tokens} positions need {rows * tokens * d.KvBytesPerToken} bytes of KV cache on {d.Device}, whose KV budget is {d.KvBudgetBytes} bytes (shardpipe.kv-cache-budget)";
        return null;
    }

    /// <summary>Positions a request may fill: a generation's prompt + max new tokens, a forward's prompt.</summary>
    public static long Tokens(IClientRequest request) =>
        request.InputIds.Length == 0 ? 0 : request.InputIds[0].LongLength + (request is Generate g ? g.MaxNewTokens : 0);
}
