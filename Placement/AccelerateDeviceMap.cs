using ShardPipe.Checkpoints;

namespace ShardPipe.Placement;

/// <summary>
/// Accelerate's planning functions, step for step: <c>get_balanced_memory</c>, <c>infer_auto_device_map</c> and
/// <c>clean_device_map</c> (accelerate 0.27.2, as transformers 4.38 calls them from <c>from_pretrained</c>).
/// Pure: it reads a <see cref="ModuleNode"/> tree and budgets, and allocates nothing.
/// </summary>
public static class AccelerateDeviceMap
{
    /// <summary>A device as Accelerate keys max_memory: an int GPU index, "cpu" or "disk".</summary>
    private static bool IsGpu(DeviceId d) => d.IsGpu;

    /// <summary>
    /// <c>get_balanced_memory</c>: budgets that spread the model evenly over the GPUs, each GPU but the last capped
    /// at model/num_gpus plus a buffer of 1.25 × max(largest no-split block, mean leaf-module size);
    /// with <paramref name="lowZero"/> GPU 0 keeps only what the others cannot take.
    /// </summary>
    public static List<(DeviceId Device, double Bytes)> BalancedMemory(ModuleNode model, List<(DeviceId Device, double Bytes)> maxMemory,
        IReadOnlyList<string> noSplit, DType? dtype, bool lowZero, bool userSetMaxMemory = true)
    {
        var mm = MaxMemory.Ordered(maxMemory);
        int numDevices = mm.Count(d => IsGpu(d.Device) && d.Bytes > 0);
        if (numDevices == 0) return mm;
        if (numDevices == 1)
        {
            lowZero = false;
            if (!userSetMaxMemory)
            {
                int i = mm.FindIndex(d => IsGpu(d.Device));
                mm[i] = (mm[i].Device, mm[i].Bytes * 0.9);
            }
        }
        var sizes = ModuleSizes.Compute(model, dtype);
        double perGpu = Math.Floor(sizes[""] / (lowZero ? numDevices - 1 : numDevices));

        double buffer = 0;
        if (noSplit.Count > 0)
        {
            var found = new Dictionary<string, double>(StringComparer.Ordinal);
            foreach (var name in sizes.Names)
            {
                if (name.Length == 0) continue;
                var module = model.Find(name);
                if (module is null) continue; // a tensor, not a module
                if (noSplit.Contains(module.ClassName) && !found.ContainsKey(module.ClassName)) found[module.ClassName] = sizes[name];
                if (found.Count == noSplit.Distinct().Count()) break;
            }
            buffer = found.Count > 0 ? found.Values.Max() : 0;
        }
        var withoutTensors = Leaves(sizes.Names).ToHashSet(StringComparer.Ordinal);
        var remaining = sizes.Names.Where(n => !withoutTensors.Contains(n)).ToList();
        var leafModules = Leaves(remaining);
        double meanLeaves = Math.Truncate(leafModules.Sum(n => sizes[n]) / Math.Max(leafModules.Count, 1));
        buffer = Math.Truncate(1.25 * Math.Max(buffer, meanLeaves));
        perGpu += buffer;

        var gpuIdx = mm.Where(d => IsGpu(d.Device) && d.Bytes > 0).Select(d => d.Device).OrderBy(d => d.Index).ToList();
        double gpu0 = mm.FirstOrDefault(d => d.Device.IsGpu && d.Device.Index == 0).Bytes;
        foreach (var dev in gpuIdx.Take(gpuIdx.Count - 1))
        {
            int i = mm.FindIndex(d => d.Device == dev);
            double cap = lowZero && dev.Index == 0 ? gpu0 : perGpu;
            mm[i] = (dev, Math.Min(cap, mm[i].Bytes));
        }
        if (lowZero)
        {
            double others = Enumerable.Range(1, numDevices - 1).Sum(k => mm.FirstOrDefault(d => d.Device.IsGpu && d.Device.Index == k).Bytes);
            double minZero = Math.Max(0, sizes[""] - others);
            int i0 = mm.FindIndex(d => d.Device.IsGpu && d.Device.Index == 0);
            if (i0 >= 0) mm[i0] = (mm[i0].Device, Math.Min(minZero, mm[i0].Bytes));
        }
        return mm;
    }

    /// <summary>get_module_leaves: names in the size table that no other name has as parent.</summary>
    private static List<string> Leaves(IReadOnlyList<string> names)
    {
        var children = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var n in names)
        {
            if (n.Length == 0 || !n.Contains('.')) continue;
            string parent = n[..n.LastIndexOf('.')];
            children[parent] = children.GetValueOrDefault(parent) + 1;
        }
        return names.Where(n => n.Length > 0 && children.GetValueOrDefault(n) == 0).ToList();
    }

    /// <summary>An entry of the work list: a module or a bare parameter.</summary>
    private sealed record Item(string Name, ModuleNode? Module, TensorNode? Tensor);

    private static List<Item> DirectItems(string prefix, ModuleNode m, bool withBuffers)
    {
        var items = m.Parameters.Select(p => new Item(ModuleNode.Join(prefix, p.Name), null, p.Tensor))
            .Concat(m.Children.Select(c => new Item(ModuleNode.Join(prefix, c.Name), c.Module, null))).ToList();
        if (withBuffers) items.AddRange(m.Buffers.Select(b => new Item(ModuleNode.Join(prefix, b.Name), null, b.Tensor)));
        return items;
    }

    /// <summary>get_max_layer_size: the largest "layer" (a module without children, or of a no-split class).</summary>
    private static (double Size, List<string> Names) MaxLayerSize(IEnumerable<Item> modules, ModuleSizes sizes, IReadOnlyList<string> noSplit)
    {
        double max = 0;
        var names = new List<string>();
        var queue = new LinkedList<Item>(modules.Where(i => i.Module is not null));
        while (queue.Count > 0)
        {
            var item = queue.First!.Value;
            queue.RemoveFirst();
            var m = item.Module!;
            if (m.Children.Count == 0 || noSplit.Contains(m.ClassName))
            {
                double size = sizes[item.Name];
                if (size > max) { max = size; names = new List<string> { item.Name }; }
                else if (size == max) names.Add(item.Name);
            }
            else
            {
                var node = queue.First;
                foreach (var c in m.Children)
                {
                    var ci = new Item(ModuleNode.Join(item.Name, c.Name), c.Module, null);
                    if (node is null) queue.AddLast(ci); else queue.AddBefore(node, ci);
                }
            }
        }
        return (max, names);
    }

    /// <summary>
    /// <c>infer_auto_device_map</c>: walk the modules in order, filling GPUs, then cpu, then disk; a module that
    /// does not fit is split into its children unless it is a no-split class (then it moves to the next device
    /// whole); the first GPU and the cpu keep room for the largest layer; tied parameters land together.
    /// </summary>
    public static List<KeyValuePair<string, DeviceId>> Infer(ModuleNode model, List<(DeviceId Device, double Bytes)> maxMemory,
        IReadOnlyList<string> noSplit, DType? dtype, bool clean = true)
    {
        var mm = MaxMemory.Ordered(maxMemory);
        var devices = mm.Select(d => d.Device).ToList();
        if (!devices.Contains(DeviceId.Disk)) devices.Add(DeviceId.Disk);
        var budget = mm.ToDictionary(d => d.Device, d => d.Bytes);
        var gpus = devices.Where(d => d != DeviceId.Cpu && d != DeviceId.Disk).ToList();
        var mainDevices = gpus.Count > 0 ? new List<DeviceId> { gpus[0], DeviceId.Cpu } : new List<DeviceId> { DeviceId.Cpu };

        var sizes = ModuleSizes.Compute(model, dtype);
        var tied = model.TiedParameters();
        var map = new List<KeyValuePair<string, DeviceId>>();
        int current = 0;
        double used = 0;

        var toTreat = DirectItems("", model, withBuffers: true);
        var (maxLayer, maxLayerNames) = MaxLayerSize(toTreat, sizes, noSplit);

        while (toTreat.Count > 0)
        {
            var item = toTreat[0];
            toTreat.RemoveAt(0);
            string name = item.Name;
            maxLayerNames = maxLayerNames.Where(n => !ModulePath.Covers(name, n)).ToList();
            if (maxLayerNames.Count == 0) (maxLayer, maxLayerNames) = MaxLayerSize(toTreat, sizes, noSplit);
            double size = sizes[name];

            // Tied groups with one member inside this module and one outside (Accelerate's substring test).
            var groups = tied.Where(g => g.Any(k => (k + ".").Contains(name + ".", StringComparison.Ordinal)) &&
                                         !g.All(k => (k + ".").Contains(name + ".", StringComparison.Ordinal))).ToList();
            var tiedParams = groups.SelectMany(g => g.Where(p => !(p + ".").Contains(name + ".", StringComparison.Ordinal))).ToList();

            if (current >= devices.Count) throw new PlacementException($"no device left for '{name}' ({size} bytes)");
            var device = devices[current];
            double? maxSize = device == DeviceId.Disk ? null : budget[device];
            // The first GPU and the cpu keep room for the largest layer (Accelerate's main_devices).
            if (mainDevices.Contains(device)) maxSize -= maxLayer;

            if (maxSize is not null && used + size > maxSize)
            {
                // Case 1: too big. Split it, or move to the next device whole.
                var children = item.Module?.Children ?? new List<(string, ModuleNode)>();
                if (children.Count == 0 || noSplit.Contains(item.Module!.ClassName))
                {
                    current++;
                    toTreat.Insert(0, item);
                    used = 0;
                }
                else
                {
                    toTreat.InsertRange(0, DirectItems(name, item.Module!, withBuffers: false));
                    (maxLayer, maxLayerNames) = MaxLayerSize(toTreat, sizes, noSplit);
                }
            }
            else if (tiedParams.Count > 0)
            {
                // Case 2: it fits, but tied parameters elsewhere must come along.
                var tiedModuleNames = new List<string>();
                var tiedModules = new List<Item>();
                foreach (var tp in tiedParams)
                {
                    int idx = toTreat.FindIndex(i => tp.Contains(i.Name, StringComparison.Ordinal));
                    if (idx < 0) throw new PlacementException($"tied parameter '{tp}' of '{name}' is not among the modules left to place");
                    tiedModuleNames.Add(toTreat[idx].Name);
                    tiedModules.Add(toTreat[idx]);
                }
                double withTies = size;
                for (int i = 0; i < tiedParams.Count; i++) withTies += sizes[tiedModuleNames[i]] - sizes[tiedParams[i]];
                if (maxSize is null || used + withTies <= maxSize)
                {
                    used += withTies;
                    map.Add(new(name, device));
                    foreach (var tm in tiedModuleNames)
                    {
                        int idx = toTreat.FindIndex(i => i.Name == tm);
                        if (idx >= 0) toTreat.RemoveAt(idx);
                        map.Add(new(tm, device));
                    }
                }
                else
                {
                    bool split = false;
                    for (int i = 0; i < tiedModules.Count; i++)
                    {
                        var tm = tiedModules[i];
                        if (tm.Module is null || tm.Module.Children.Count == 0 || noSplit.Contains(tm.Module.ClassName)) continue;
                        int idx = toTreat.FindIndex(x => x.Name == tiedModuleNames[i]);
                        var expanded = DirectItems(tiedModuleNames[i], tm.Module, withBuffers: false);
                        toTreat = new List<Item> { item }.Concat(toTreat.Take(idx)).Concat(expanded).Concat(toTreat.Skip(idx + 1)).ToList();
                        (maxLayer, maxLayerNames) = MaxLayerSize(toTreat, sizes, noSplit);
                        split = true;
                        break;
                    }
                    if (!split)
                    {
                        current++;
                        toTreat.Insert(0, item);
                        used = 0;
                    }
                }
            }
            else
            {
                used += size;
                map.Add(new(name, device));
            }
        }
        return clean ? Clean(map) : map;
    }

    /// <summary>
    /// <c>clean_device_map</c>: a module whose entries all share one device is collapsed to one entry (appended
    /// at the end, as the Python dict re-insertion does), recursively from the root.
    /// </summary>
    public static List<KeyValuePair<string, DeviceId>> Clean(List<KeyValuePair<string, DeviceId>> map, string module = "")
    {
        string prefix = module.Length == 0 ? "" : module + ".";
        var values = map.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal)).Select(kv => kv.Value).ToList();
        if (values.Distinct().Count() == 1 && values.Count > 1)
        {
            map.RemoveAll(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal));
            map.Add(new(module, values[0]));
        }
        int depth = module.Length == 0 ? 1 : module.Split('.').Length + 1;
        var children = map.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal) && kv.Key.Length > module.Length)
            .Select(kv => string.Join('.', kv.Key.Split('.').Take(depth))).Distinct().ToList();
        foreach (var child in children) Clean(map, child);
        return map;
    }
}
