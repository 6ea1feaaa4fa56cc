using ShardPipe.Checkpoints;

namespace ShardPipe.Placement;

/// <summary>Planning a model over a cluster: every device named <c>node/device</c> with its budget.</summary>
public sealed record ClusterPlanRequest
{
    public required ModuleNode Model { get; init; }
    /// <summary>Devices with budgets, nodes in the order given (that order is the pipeline's order).</summary>
    public required List<(DeviceId Device, double Bytes)> Devices { get; init; }
    /// <summary>"balanced" (also "auto", the cluster default) or "sequential".</summary>
    public string Strategy { get; init; } = "balanced";
    public required IReadOnlyList<string> NoSplitModuleClasses { get; init; }
    public DType? DType { get; init; }
    /// <summary>Module paths of the decoder blocks in order (the units that are spread).</summary>
    public required IReadOnlyList<string> Layers { get; init; }
    /// <summary>Put a tied head on the last device with its own copy of the weight (counted twice) instead of closing a ring to the first.</summary>
    public bool ReplicateTiedHead { get; init; }
    /// <summary>
    /// Measured speeds of devices (any positive unit; only ratios count): "balanced" then weighs each device by budget ×
    /// relative speed (<see cref="DeviceSpeeds"/>); a device missing here counts as average. Null = by budgets alone.
    /// </summary>
    public IReadOnlyDictionary<DeviceId, double>? Speeds { get; init; }
}

/// <summary>
/// Cluster placement: each node's blocks are contiguous (one activation hop per node boundary), faster devices
/// first within a node, block ranges in proportion to budgets (× relative speeds, when measured: <see cref="DeviceSpeeds"/>)
/// over every device that has room. Tied parameters
/// stay on one device as in Accelerate, so a tied head runs where the embedding lives. Fails before any weight is
/// read when the model cannot fit, saying how much is missing and where.
/// </summary>
public static class ClusterPlanner
{
    private sealed record Unit(string Name, double Bytes, bool IsLayer);

    public static PlanResult Plan(ClusterPlanRequest request)
    {
        if (request.Strategy is not ("balanced" or "auto" or "sequential"))
            throw new PlacementException($"cluster device_map '{request.Strategy}': use balanced (default), auto or sequential");
        // Budgets are real memory: count bools as bytes, not Accelerate's 1/8.
        var sizes = ModuleSizes.Compute(request.Model, request.DType, memoryBytes: true);
        var layers = request.Layers.ToHashSet(StringComparer.Ordinal);
        var units = new List<Unit>();
        Flatten(request.Model, "", layers, sizes, units);

        // Faster devices first inside a node; nodes keep their given order.
        var nodeOrder = request.Devices.Select(d => d.Device.Node ?? "").Distinct().ToList();
        var devices = request.Devices.Where(d => d.Device.Kind != "disk")
            .OrderBy(d => nodeOrder.IndexOf(d.Device.Node ?? "")).ThenBy(d => d.Device).ToList();
        if (devices.Count == 0) throw new PlacementException("no devices with memory to plan on");

        // Tied weights: the unit holding the second name of a tied group must share the first name's device.
        var tied = request.Model.TiedParameters();
        var tiedTo = new Dictionary<string, string>(StringComparer.Ordinal); // unit -> unit it must follow
        double replicated = 0;
        foreach (var g in tied)
        {
            var owners = g.Select(k => units.FindIndex(u => ModulePath.Covers(u.Name, k)))
                .Distinct().Order().Select(i => units[i].Name).ToList(); // the first unit in model order leads
            for (int i = 1; i < owners.Count; i++)
            {
                if (request.ReplicateTiedHead)
                {
                    double bytes = ModuleSizes.TensorBytes(request.Model.NamedParameters().First(p => p.Key == g[0] || g.Contains(p.Key)).Tensor, request.DType, memoryBytes: true);
                    int idx = units.FindIndex(u => u.Name == owners[i]);
                    units[idx] = units[idx] with { Bytes = units[idx].Bytes + bytes };
                    replicated += bytes;
                }
                else tiedTo[owners[i]] = owners[0];
            }
        }

        var pre = new List<Unit>();
        var post = new List<Unit>();
        var blocks = units.Where(u => u.IsLayer).ToList();
        bool seenLayer = false;
        foreach (var u in units)
        {
            if (u.IsLayer) { seenLayer = true; continue; }
            (seenLayer ? post : pre).Add(u);
        }
        var assignment = new Dictionary<string, int>(StringComparer.Ordinal);
        var load = new double[devices.Count];
        int last = devices.Count - 1;
        var lastMemory = devices[last].Device; // where the head goes (disk devices, if used, only take blocks)
        foreach (var u in pre) { assignment[u.Name] = 0; load[0] += u.Bytes; }
        foreach (var u in post)
        {
            int d = tiedTo.TryGetValue(u.Name, out var leader) && assignment.TryGetValue(leader, out var ld) ? ld : last;
            assignment[u.Name] = d;
            load[d] += u.Bytes;
        }
        var caps = devices.Select((d, i) => d.Bytes - load[i]).ToArray();
        if (caps.Any(c => c < 0))
        {
            int i = Array.FindIndex(caps, c => c < 0);
            throw new PlacementException($"{devices[i].Device} needs {ByteSize.Format((long)load[i])} for {string.Join(", ", assignment.Where(a => a.Value == i).Select(a => a.Key))} " +
                $"but its budget is {ByteSize.Format((long)devices[i].Bytes)}: {ByteSize.Format((long)-caps[i])} missing");
        }
        var ranges = request.Strategy == "sequential" ? Sequential(blocks, caps) : Balanced(blocks, caps, DeviceSpeeds.Weights(devices, request.Speeds));
        if (ranges is null && request.Devices.Any(d => d.Device.Kind == "disk"))
        {
            // Memory cannot hold every block: blocks spill onto disk devices, each node's disk after its own memory
            // (pipeline order unchanged), as little as possible and in proportion to the disks' budgets.
            var withDisk = request.Devices.OrderBy(d => nodeOrder.IndexOf(d.Device.Node ?? "")).ThenBy(d => d.Device).ToList();
            var extCaps = withDisk.Select(d => d.Device.Kind == "disk" ? d.Bytes : caps[devices.FindIndex(m => m.Device == d.Device)]).ToArray();
            var isDisk = withDisk.Select(d => d.Device.Kind == "disk").ToArray();
            var spilled = request.Strategy == "sequential" ? Sequential(blocks, extCaps) : Spill(blocks, extCaps, isDisk, withDisk.Select(d => d.Bytes).ToArray());
            if (spilled is not null)
            {
                foreach (var (name, index) in assignment.ToList()) assignment[name] = withDisk.FindIndex(d => d.Device == devices[index].Device);
                devices = withDisk;
                ranges = spilled;
            }
        }
        if (ranges is null)
        {
            double need = units.Sum(u => u.Bytes), have = devices.Sum(d => d.Bytes);
            double largest = blocks.Count > 0 ? blocks.Max(b => b.Bytes) : 0;
            throw new PlacementException($"the model needs {ByteSize.Format((long)need)} but the devices offer {ByteSize.Format((long)have)} " +
                $"({string.Join(", ", devices.Select(d => $"{d.Device}={ByteSize.Format((long)d.Bytes)}"))}): " +
                (need > have ? $"{ByteSize.Format((long)(need - have))} missing" : $"blocks of {ByteSize.Format((long)largest)} do not pack into the budgets"));
        }
        for (int b = 0; b < blocks.Count; b++) assignment[blocks[b].Name] = ranges[b];

        var map = units.Select(u => new KeyValuePair<string, DeviceId>(u.Name, devices[assignment[u.Name]].Device)).ToList();
        map = AccelerateDeviceMap.Clean(map);
        var usage = DevicePlanner.Usage(request.Model, map, request.Devices, request.DType, memoryBytes: true)
            .OrderBy(x => devices.FindIndex(d => d.Device == x.Device)).ToList();
        if (replicated > 0)
        {
            int i = usage.FindIndex(x => x.Device == lastMemory);
            if (i >= 0) usage[i] = (usage[i].Device, usage[i].Bytes + replicated, usage[i].Budget);
        }
        return new PlanResult(map, usage);
    }

    /// <summary>Units in order: decoder blocks whole, other modules whole unless they contain blocks.</summary>
    private static void Flatten(ModuleNode m, string path, HashSet<string> layers, ModuleSizes sizes, List<Unit> units)
    {
        foreach (var (name, _) in m.Parameters) units.Add(new Unit(ModuleNode.Join(path, name), sizes[ModuleNode.Join(path, name)], false));
        foreach (var (name, child) in m.Children)
        {
            string p = ModuleNode.Join(path, name);
            if (layers.Contains(p)) units.Add(new Unit(p, sizes[p], true));
            else if (layers.Any(l => ModulePath.Covers(p, l))) Flatten(child, p, layers, sizes, units);
            else units.Add(new Unit(p, sizes[p], false));
        }
    }

    /// <summary>
    /// Blocks over memory devices filled to capacity and disk devices filled to r × budget, for the smallest r that
    /// places them all: memory first, disk only for the rest, spread over the disks.
    /// </summary>
    private static int[]? Spill(List<Unit> blocks, double[] caps, bool[] isDisk, double[] budgets) =>
        Smallest(r => FillUpTo(blocks, caps.Length, d => isDisk[d] ? Math.Min(caps[d], r * budgets[d]) : caps[d]));

    /// <summary>Blocks in order onto devices in order, each device up to its limit; null when they do not all fit.</summary>
    private static int[]? FillUpTo(List<Unit> blocks, int devices, Func<int, double> limit)
    {
        var result = new int[blocks.Count];
        var used = new double[devices];
        int d = 0;
        for (int b = 0; b < blocks.Count; b++)
        {
            while (d < devices && used[d] + blocks[b].Bytes > limit(d) + 1e-9) d++;
            if (d == devices) return null;
            used[d] += blocks[b].Bytes;
            result[b] = d;
        }
        return result;
    }

    /// <summary>The fill at the smallest ratio r in [0, 1] that places every block (bisection); null when even r = 1 does not.</summary>
    private static int[]? Smallest(Func<double, int[]?> fill)
    {
        if (fill(1.0) is null) return null;
        double lo = 0, hi = 1;
        for (int i = 0; i < 60; i++)
        {
            double mid = (lo + hi) / 2;
            if (fill(mid) is null) lo = mid; else hi = mid;
        }
        return fill(hi);
    }

    /// <summary>Fill devices in order up to their capacity.</summary>
    private static int[]? Sequential(List<Unit> blocks, double[] caps) => FillUpTo(blocks, caps.Length, d => caps[d]);

    /// <summary>
    /// Contiguous ranges whose loads are proportional to the weights (budgets, × relative speeds when known): the
    /// smallest fill ratio r at which filling every device up to r × weight (within capacity) places all blocks, found
    /// by bisection; then devices left empty while blocks remain take one from a neighbour where it fits.
    /// </summary>
    private static int[]? Balanced(List<Unit> blocks, double[] caps, double[] weights)
    {
        if (blocks.Count == 0) return Array.Empty<int>();
        // r = 1 must reach every capacity (a slow device's weight is below its budget): scale up when it does not.
        // Budgets alone never need it (a capacity is at most its budget), so that plan is exactly the byte-balanced one.
        double scale = Math.Max(1, Enumerable.Range(0, caps.Length).Where(d => weights[d] > 0).Select(d => caps[d] / weights[d]).DefaultIfEmpty(1).Max());
        var best = Smallest(r => FillUpTo(blocks, caps.Length, d => Math.Min(caps[d], r * scale * weights[d])));
        if (best is null) return null;
        // No device with room left empty: move a boundary block onto an empty device when it fits there.
        for (int d = 0; d < caps.Length; d++)
        {
            if (best.Contains(d) || blocks.Count <= best.Distinct().Count()) continue;
            int donor = d > 0 && best.Count(x => x == d - 1) > 1 ? d - 1 : best.Count(x => x == d + 1) > 1 ? d + 1 : -1;
            if (donor < 0) continue;
            int idx = donor < d ? Array.LastIndexOf(best, donor) : Array.IndexOf(best, donor);
            if (blocks[idx].Bytes <= caps[d]) best[idx] = d;
        }
        return best;
    }
}
