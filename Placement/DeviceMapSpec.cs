using System.Globalization;
using System.Text.Json;

namespace ShardPipe.Placement;

/// <summary>
/// The <c>device_map</c> argument as Hugging Face takes it, parsed once for every caller (one process, the planner,
/// the cluster): a strategy (<c>auto</c>, <c>balanced</c>, <c>balanced_low_0</c>, <c>sequential</c>), one device
/// (<c>cpu</c>, <c>cuda:N</c>, <c>N</c>, <c>node/device</c>), or a JSON object of module prefix → device in the order
/// given. A module takes its closest listed ancestor's device (<see cref="ModulePath"/>).
/// </summary>
public sealed class DeviceMapSpec
{
    public static readonly IReadOnlyList<string> Strategies = new[] { "auto", "balanced", "balanced_low_0", "sequential" };

    /// <summary>The strategy to plan with, or null for a given map.</summary>
    public string? Strategy { get; }

    /// <summary>Module prefix → device, in the order given ("" = the whole model); empty for a strategy.</summary>
    public IReadOnlyList<KeyValuePair<string, DeviceId>> Entries { get; }

    private DeviceMapSpec(string? strategy, IReadOnlyList<KeyValuePair<string, DeviceId>> entries)
    {
        Strategy = strategy;
        Entries = entries;
    }

    public bool IsStrategy => Strategy is not null;
    /// <summary>One device for the whole model.</summary>
    public bool IsSingleDevice => Strategy is null && Entries.Count == 1 && Entries[0].Key.Length == 0;
    /// <summary>A module → device map that must name real modules and cover every parameter once.</summary>
    public bool IsExplicit => Strategy is null && !IsSingleDevice;

    public static DeviceMapSpec Single(DeviceId device) => new(null, new[] { new KeyValuePair<string, DeviceId>("", device) });

    public static DeviceMapSpec FromEntries(IEnumerable<KeyValuePair<string, DeviceId>> entries)
    {
        var list = entries.ToList();
        var twice = list.GroupBy(e => e.Key).FirstOrDefault(g => g.Count() > 1);
        if (twice is not null) throw new PlacementException($"device_map lists '{twice.Key}' twice");
        return new(null, list);
    }

    /// <summary>Module → device name, as a dictionary argument gives it (ints are GPU indices).</summary>
    public static DeviceMapSpec FromDict(IEnumerable<KeyValuePair<string, string>> map) =>
        FromEntries(map.Select(kv => new KeyValuePair<string, DeviceId>(kv.Key, ParseDevice(kv.Value, kv.Key))));

    /// <summary>Parses the CLI/API text: a strategy, a device, or a JSON object of module → device.</summary>
    public static DeviceMapSpec Parse(string text)
    {
        string s = text.Trim();
        if (Strategies.Contains(s)) return new(s, Array.Empty<KeyValuePair<string, DeviceId>>());
        if (!s.StartsWith('{')) return Single(ParseDevice(s, null));
        JsonDocument doc;
        try { doc = JsonDocument.Parse(s); }
        catch (JsonException ex) { throw new PlacementException($"device_map is not valid JSON: {ex.Message}"); }
        using (doc)
        {
            var list = new List<KeyValuePair<string, DeviceId>>();
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                string device = p.Value.ValueKind switch
                {
                    JsonValueKind.Number when p.Value.TryGetInt32(out int i) && i >= 0 => i.ToString(CultureInfo.InvariantCulture),
                    JsonValueKind.String => p.Value.GetString()!,
                    _ => throw new PlacementException($"device_map['{p.Name}'] must be a device (an int, \"cpu\", \"disk\", \"cuda:N\")"),
                };
                list.Add(new(p.Name, ParseDevice(device, p.Name)));
            }
            return FromEntries(list);
        }
    }

    private static DeviceId ParseDevice(string text, string? module)
    {
        try { return DeviceId.Parse(text); }
        catch (InvalidInputException ex)
        {
            throw new PlacementException(module is null
                ? $"device_map '{text}': {ex.Message}, or one of {string.Join(", ", Strategies)}, or a JSON object of module → device"
                : $"device_map['{module}']: {ex.Message}");
        }
    }

    /// <summary>The device of a module or tensor: its own entry or its closest listed ancestor's; null when none covers it.</summary>
    public DeviceId? DeviceFor(string path) => ModulePath.Closest(Entries, path);

    /// <summary>The devices the map names, in order of first use.</summary>
    public IEnumerable<DeviceId> Devices => Entries.Select(e => e.Value).Distinct();

    /// <summary>
    /// An explicit map must name real modules (an unknown name lists close matches) and cover every parameter
    /// exactly once: none left out, none claimed by two entries. A strategy or a single device needs no check.
    /// </summary>
    public void Validate(ModuleNode model)
    {
        if (!IsExplicit) return;
        var modules = model.NamedModules().Select(m => m.Path).ToList();
        var tensors = model.NamedParameters(removeDuplicate: false).Select(p => p.Key).Concat(model.NamedBuffers().Select(b => b.Key));
        var known = modules.Concat(tensors).ToHashSet(StringComparer.Ordinal);
        foreach (var (name, _) in Entries)
            if (!known.Contains(name))
                throw new PlacementException($"device_map names '{name}', which is not a module or parameter of {model.ClassName} (close: {string.Join(", ", CloseMatches(name, modules))})");
        var missing = new List<string>();
        foreach (var (key, _) in model.NamedParameters())
        {
            var owners = Entries.Where(e => ModulePath.Covers(e.Key, key)).Select(e => e.Key).ToList();
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

    public override string ToString() => Strategy ?? string.Join(", ", Entries.Select(e => $"{(e.Key.Length == 0 ? "(all)" : e.Key)}: {e.Value}"));
}
