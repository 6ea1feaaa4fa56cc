using ShardPipe.Checkpoints;

namespace ShardPipe.Placement;

/// <summary>A re-plan after devices were lost: the new map (pipeline order kept) and what moved from where to where.</summary>
public sealed record RecoveryPlan(List<KeyValuePair<string, DeviceId>> DeviceMap, List<(string Module, DeviceId From, DeviceId To)> Moved);

/// <summary>
/// Re-plans a served model after some of its devices were lost (pure): every module on a surviving device stays
/// where it is — so only what moved has to be loaded — and each module of a lost device goes, in pipeline order,
/// to the device that now holds the module before it when that has room (the pipeline stays contiguous), else to
/// the one holding the module after it, else to the surviving memory device with the most room, and to a disk
/// device only when no memory device can hold it. Budgets are checked as the cluster planner counts bytes; when
/// the survivors cannot hold everything, a <see cref="PlacementException"/> says how many bytes are missing for
/// which modules.
/// </summary>
public static class RecoveryPlanner
{
    /// <param name="intact">Surviving devices that still hold their modules (default: every survivor); a survivor that lost its
    /// slice (say its node restarted) takes modules like any other device, from an empty budget.</param>
    public static RecoveryPlan Replan(ModuleNode model, DType? dtype, IReadOnlyList<KeyValuePair<string, DeviceId>> map,
        IReadOnlyList<(DeviceId Device, double Budget)> survivors, IReadOnlySet<DeviceId>? intact = null)
    {
        // Bytes under each map entry, counted as DevicePlanner.Usage counts a device's (unique tensors, closest entry).
        var entryKeys = map.Select(kv => new KeyValuePair<string, string>(kv.Key, kv.Key)).ToList();
        var size = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var (key, t) in model.NamedParameters().Concat(model.NamedBuffers()))
            if (ModulePath.Closest(entryKeys, key) is { } entry)
                size[entry] = size.GetValueOrDefault(entry) + ModuleSizes.TensorBytes(t, dtype, memoryBytes: true);

        var alive = survivors.Select(s => s.Device).ToHashSet();
        var kept = intact is null ? alive : alive.Where(intact.Contains).ToHashSet();
        var free = survivors.ToDictionary(s => s.Device, s => s.Budget);
        foreach (var (module, device) in map)
            if (kept.Contains(device)) free[device] -= size.GetValueOrDefault(module);

        var result = new List<KeyValuePair<string, DeviceId>>();
        var moved = new List<(string, DeviceId, DeviceId)>();
        var homeless = new List<(string Module, double Bytes)>();
        for (int i = 0; i < map.Count; i++)
        {
            var (module, device) = map[i];
            if (kept.Contains(device))
            {
                result.Add(map[i]);
                continue;
            }
            double bytes = size.GetValueOrDefault(module);
            DeviceId? before = result.Count > 0 ? result[^1].Value : null;
            DeviceId? after = map.Skip(i + 1).Select(kv => kv.Value).FirstOrDefault(alive.Contains);
            var candidates = new[] { before, after }.OfType<DeviceId>().Where(alive.Contains)
                .Concat(survivors.OrderByDescending(s => free[s.Device]).Select(s => s.Device))
                .Distinct()
                .OrderBy(d => d.Kind == "disk" ? 1 : 0) // stable: the preference order above within memory, then disk
                .ToList();
            var to = candidates.FirstOrDefault(d => free[d] >= bytes);
            if (to is null)
            {
                homeless.Add((module, bytes));
                continue;
            }
            free[to] -= bytes;
            result.Add(new(module, to));
            moved.Add((module, device, to));
        }
        if (homeless.Count > 0)
        {
            double missing = homeless.Sum(h => h.Bytes);
            throw new PlacementException(
                $"the surviving devices cannot hold the lost modules: {ByteSize.Format((long)Math.Ceiling(missing))} missing for " +
                $"{string.Join(", ", homeless.Select(h => $"{h.Module} ({ByteSize.Format((long)h.Bytes)})"))}; room left: " +
                string.Join(", ", survivors.Select(s => $"{s.Device} {ByteSize.Format((long)Math.Max(0, free[s.Device]))}")));
        }
        return new RecoveryPlan(result, moved);
    }
}
