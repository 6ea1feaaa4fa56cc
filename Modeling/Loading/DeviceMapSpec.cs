using System.Text.Json;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Loading;

/// <summary>
/// A one-process <c>device_map</c>: a single device ("cpu", "cuda:0", 0) or module prefix → device, where a
/// module inherits its closest listed ancestor's device and every parameter must be covered.
/// </summary>
public sealed class DeviceMapSpec
{
    /// <summary>Prefix → device name, in the order given ("" is the whole model).</summary>
    public IReadOnlyList<KeyValuePair<string, string>> Entries { get; }

    private DeviceMapSpec(List<KeyValuePair<string, string>> entries) => Entries = entries;

    public static DeviceMapSpec Single(string device) => new(new() { new("", NormaliseDevice(device)) });

    public static DeviceMapSpec FromDict(IEnumerable<KeyValuePair<string, string>> map) =>
        new(map.Select(kv => new KeyValuePair<string, string>(kv.Key, NormaliseDevice(kv.Value))).ToList());

    /// <summary>Parses the CLI/API string: a device, or a JSON object of prefix → device (ints allowed).</summary>
    public static DeviceMapSpec Parse(string spec)
    {
        string s = spec.Trim();
        if (s.StartsWith('{'))
        {
            using var doc = JsonDocument.Parse(s);
            var list = new List<KeyValuePair<string, string>>();
            foreach (var p in doc.RootElement.EnumerateObject())
                list.Add(new(p.Name, p.Value.ValueKind == JsonValueKind.Number ? p.Value.GetInt32().ToString(System.Globalization.CultureInfo.InvariantCulture) : p.Value.GetString() ?? ""));
            return FromDict(list);
        }
        if (s is "auto" or "balanced" or "balanced_low_0" or "sequential")
            throw new NotSupportedException($"device_map '{s}' needs the placement planner, which is not built yet; give a device or a module → device map");
        return Single(s);
    }

    /// <summary>HF writes GPU devices as ints in hf_device_map; we keep "cuda:N" normalised to that int form on output.</summary>
    private static string NormaliseDevice(string device)
    {
        string d = device.Trim();
        if (int.TryParse(d, out int i)) return $"cuda:{i}";
        return d;
    }

    /// <summary>The device name for a module path: the longest listed prefix that is the path or an ancestor of it.</summary>
    public string? DeviceFor(string modulePath)
    {
        string? best = null;
        int bestLen = -1;
        foreach (var (prefix, device) in Entries)
        {
            bool matches = prefix.Length == 0 || modulePath == prefix || modulePath.StartsWith(prefix + ".", StringComparison.Ordinal);
            if (matches && prefix.Length > bestLen)
            {
                best = device;
                bestLen = prefix.Length;
            }
        }
        return best;
    }

    /// <summary>Checks that every parameter is covered and every key names a real module; resolves devices.</summary>
    public Dictionary<string, Device> Validate(HfModule model)
    {
        var modules = model.NamedModules().Select(m => m.Path).ToHashSet(StringComparer.Ordinal);
        foreach (var (prefix, _) in Entries)
            if (prefix.Length > 0 && !modules.Contains(prefix))
            {
                var close = modules.Where(m => m.Length > 0).OrderBy(m => Levenshtein(m, prefix)).Take(3);
                throw new ArgumentException($"device_map names '{prefix}', which is not a module of {model.ClassName} (close: {string.Join(", ", close)})");
            }
        var uncovered = model.NamedParameters().Select(p => p.Key).Where(k => DeviceFor(ModuleOf(k)) is null).ToList();
        if (uncovered.Count > 0)
            throw new ArgumentException($"device_map does not cover {uncovered.Count} parameter(s), e.g. {string.Join(", ", uncovered.Take(3))}");
        return Entries.Select(e => e.Value).Distinct().ToDictionary(d => d, TorchRuntime.ParseDevice);
    }

    public static string ModuleOf(string tensorKey)
    {
        int dot = tensorKey.LastIndexOf('.');
        return dot < 0 ? "" : tensorKey[..dot];
    }

    private static int Levenshtein(string a, string b)
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
