using System.Text.Json;
using ShardPipe.Checkpoints;

namespace ShardPipe.Placement;

/// <summary>What to plan: the model tree, a strategy or explicit map, budgets, dtype and no-split classes.</summary>
public sealed record PlanRequest
{
    public required ModuleNode Model { get; init; }
    /// <summary>"auto", "balanced", "balanced_low_0", "sequential", a single device, or a JSON object of module → device.</summary>
    public required string DeviceMap { get; init; }
    /// <summary>Budgets; null = the defaults the caller supplies in <see cref="DefaultMaxMemory"/>.</summary>
    public List<(DeviceId Device, double Bytes)>? MaxMemory { get; init; }
    public List<(DeviceId Device, double Bytes)> DefaultMaxMemory { get; init; } = new() { (DeviceId.Cpu, MaxMemoryDefaults.Cpu) };
    public required IReadOnlyList<string> NoSplitModuleClasses { get; init; }
    public DType? DType { get; init; }
}

internal static class MaxMemoryDefaults
{
    public static readonly double Cpu = MaxMemory.DefaultCpuBytes();
}

/// <summary>A plan: the ordered device map and, per device, the bytes placed there against its budget.</summary>
public sealed record PlanResult(
    List<KeyValuePair<string, DeviceId>> DeviceMap,
    List<(DeviceId Device, double Bytes, double? Budget)> Devices);

/// <summary>Turns a <see cref="PlanRequest"/> into a device map with Accelerate's semantics.</summary>
public static class DevicePlanner
{
    public static readonly string[] Strategies = { "auto", "balanced", "balanced_low_0", "sequential" };

    public static PlanResult Plan(PlanRequest request)
    {
        string spec = request.DeviceMap.Trim();
        bool userSet = request.MaxMemory is not null;
        var maxMemory = request.MaxMemory ?? request.DefaultMaxMemory;
        List<KeyValuePair<string, DeviceId>> map;
        if (Strategies.Contains(spec))
        {
            var budgets = spec == "sequential"
                ? MaxMemory.Ordered(maxMemory)
                : AccelerateDeviceMap.BalancedMemory(request.Model, maxMemory, request.NoSplitModuleClasses, request.DType,
                    lowZero: spec == "balanced_low_0", userSetMaxMemory: userSet);
            map = AccelerateDeviceMap.Infer(request.Model, budgets, request.NoSplitModuleClasses, request.DType);
        }
        else if (spec.StartsWith('{'))
        {
            map = ParseExplicit(spec);
            ValidateExplicit(request.Model, map);
        }
        else
        {
            map = new List<KeyValuePair<string, DeviceId>> { new("", DeviceId.Parse(spec)) };
        }
        return new PlanResult(map, Usage(request.Model, map, maxMemory, request.DType));
    }

    /// <summary>Bytes per device: every unique tensor counted once, on the device of its closest mapped ancestor.</summary>
    public static List<(DeviceId Device, double Bytes, double? Budget)> Usage(ModuleNode model,
        List<KeyValuePair<string, DeviceId>> map, List<(DeviceId Device, double Bytes)> budgets, DType? dtype, bool memoryBytes = false)
    {
        var bytes = new Dictionary<DeviceId, double>();
        foreach (var (key, t) in model.NamedParameters().Concat(model.NamedBuffers()))
        {
            var device = DeviceOf(map, key);
            if (device is null) continue;
            bytes[device] = bytes.GetValueOrDefault(device) + ModuleSizes.TensorBytes(t, dtype, memoryBytes);
        }
        var order = map.Select(kv => kv.Value).Distinct().OrderBy(d => d.Node ?? "").ThenBy(d => d).ToList();
        return order.Select(d => (d, bytes.GetValueOrDefault(d), budgets.Where(b => b.Device == d).Select(b => (double?)b.Bytes).FirstOrDefault())).ToList();
    }

    /// <summary>The device of a tensor or module: its own entry or its closest mapped ancestor's.</summary>
    public static DeviceId? DeviceOf(List<KeyValuePair<string, DeviceId>> map, string key)
    {
        DeviceId? best = null;
        int bestLen = -1;
        foreach (var (prefix, d) in map)
        {
            bool hit = prefix.Length == 0 || key == prefix || key.StartsWith(prefix + ".", StringComparison.Ordinal);
            if (hit && prefix.Length > bestLen) { best = d; bestLen = prefix.Length; }
        }
        return best;
    }

    public static List<KeyValuePair<string, DeviceId>> ParseExplicit(string json)
    {
        using var doc = JsonDocument.Parse(json);
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new PlacementException("an explicit device_map must be a JSON object of module → device");
        var list = new List<KeyValuePair<string, DeviceId>>();
        foreach (var p in doc.RootElement.EnumerateObject())
        {
            string text = p.Value.ValueKind switch
            {
                JsonValueKind.Number => p.Value.GetInt32().ToString(System.Globalization.CultureInfo.InvariantCulture),
                JsonValueKind.String => p.Value.GetString()!,
                _ => throw new PlacementException($"device_map['{p.Name}'] must be a device (int, \"cpu\", \"disk\", \"cuda:N\")"),
            };
            list.Add(new(p.Name, DeviceId.Parse(text)));
        }
        return list;
    }

    /// <summary>
    /// An explicit map must name real modules (unknown names list close matches) and cover every parameter
    /// exactly once: no parameter left out, none claimed by two entries.
    /// </summary>
    public static void ValidateExplicit(ModuleNode model, List<KeyValuePair<string, DeviceId>> map)
    {
        var modules = model.NamedModules().Select(m => m.Path).ToList();
        var tensors = model.NamedParameters(removeDuplicate: false).Select(p => p.Key).Concat(model.NamedBuffers().Select(b => b.Key)).ToList();
        var known = modules.Concat(tensors).ToHashSet(StringComparer.Ordinal);
        foreach (var (name, _) in map)
            if (!known.Contains(name))
            {
                throw new PlacementException($"device_map names '{name}', which is not a module or parameter of {model.ClassName} (close: {string.Join(", ", CloseMatches(name, modules))})");
            }
        var missing = new List<string>();
        foreach (var (key, _) in model.NamedParameters())
        {
            var owners = map.Where(kv => kv.Key.Length == 0 || key == kv.Key || key.StartsWith(kv.Key + ".", StringComparison.Ordinal)).Select(kv => kv.Key).ToList();
            if (owners.Count == 0) missing.Add(key);
            else if (owners.Count > 1) throw new PlacementException($"device_map covers '{key}' more than once (by {string.Join(" and ", owners.Select(o => $"'{o}'"))})");
        }
        if (missing.Count > 0)
            throw new PlacementException($"device_map gives no device for {missing.Count} parameter(s): {string.Join(", ", missing.Take(5))}{(missing.Count > 5 ? ", …" : "")}");
    }

    /// <summary>Up to three known names nearest to an unknown one: extensions of it first, then by edit distance.</summary>
    public static IEnumerable<string> CloseMatches(string name, IEnumerable<string> known) =>
        known.Where(m => m.Length > 0)
            .OrderBy(m => m.StartsWith(name, StringComparison.Ordinal) || name.StartsWith(m + ".", StringComparison.Ordinal) ? 0 : 1)
            .ThenBy(m => Distance(m, name))
            .Take(3);

    private static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }
}
