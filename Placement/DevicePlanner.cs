using ShardPipe.Checkpoints;

namespace ShardPipe.Placement;

/// <summary>What to plan: the model tree, a strategy or explicit map, budgets, dtype and no-split classes.</summary>
public sealed record PlanRequest
{
    public required ModuleNode Model { get; init; }
    /// <summary>A strategy, a single device, or module → device (<see cref="DeviceMapSpec.Parse"/>).</summary>
    public required DeviceMapSpec DeviceMap { get; init; }
    /// <summary>Budgets; null = the defaults the caller supplies in <see cref="DefaultMaxMemory"/>.</summary>
    public List<(DeviceId Device, double Bytes)>? MaxMemory { get; init; }
    public List<(DeviceId Device, double Bytes)> DefaultMaxMemory { get; init; } = new() { (DeviceId.Cpu, Placement.MaxMemory.DefaultCpuBytes()) };
    public required IReadOnlyList<string> NoSplitModuleClasses { get; init; }
    public DType? DType { get; init; }
}

/// <summary>A plan: the ordered device map and, per device, the bytes placed there against its budget.</summary>
public sealed record PlanResult(
    List<KeyValuePair<string, DeviceId>> DeviceMap,
    List<(DeviceId Device, double Bytes, double? Budget)> Devices);

/// <summary>Turns a <see cref="PlanRequest"/> into a device map with Accelerate's semantics.</summary>
public static class DevicePlanner
{
    public static PlanResult Plan(PlanRequest request)
    {
        var spec = request.DeviceMap;
        bool userSet = request.MaxMemory is not null;
        var maxMemory = request.MaxMemory ?? request.DefaultMaxMemory;
        List<KeyValuePair<string, DeviceId>> map;
        if (spec.Strategy is { } strategy)
        {
            var budgets = strategy == "sequential"
                ? MaxMemory.Ordered(maxMemory)
                : AccelerateDeviceMap.BalancedMemory(request.Model, maxMemory, request.NoSplitModuleClasses, request.DType,
                    lowZero: strategy == "balanced_low_0", userSetMaxMemory: userSet);
            map = AccelerateDeviceMap.Infer(request.Model, budgets, request.NoSplitModuleClasses, request.DType);
        }
        else
        {
            spec.Validate(request.Model);
            map = spec.Entries.ToList();
        }
        return new PlanResult(map, Usage(request.Model, map, maxMemory, request.DType));
    }

    /// <summary>Bytes per device: every unique tensor counted once, on the device of its closest mapped ancestor.</summary>
    public static List<(DeviceId Device, double Bytes, double? Budget)> Usage(ModuleNode model,
        IReadOnlyList<KeyValuePair<string, DeviceId>> map, IReadOnlyList<(DeviceId Device, double Bytes)> budgets, DType? dtype, bool memoryBytes = false)
    {
        var bytes = new Dictionary<DeviceId, double>();
        foreach (var (key, t) in model.NamedParameters().Concat(model.NamedBuffers()))
        {
            var device = ModulePath.Closest(map, key);
            if (device is null) continue;
            bytes[device] = bytes.GetValueOrDefault(device) + ModuleSizes.TensorBytes(t, dtype, memoryBytes);
        }
        var order = map.Select(kv => kv.Value).Distinct().OrderBy(d => d.Node ?? "").ThenBy(d => d).ToList();
        return order.Select(d => (d, bytes.GetValueOrDefault(d), budgets.Where(b => b.Device == d).Select(b => (double?)b.Bytes).FirstOrDefault())).ToList();
    }
}
