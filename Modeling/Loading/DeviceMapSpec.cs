using System.Text.Json;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Placement;
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

    /// <summary>Checks the map with the planner's rules (real module names, every parameter covered once); resolves devices.</summary>
    public Dictionary<string, Device> Validate(HfModule model)
    {
        if (!(Entries.Count == 1 && Entries[0].Key.Length == 0))
            DevicePlanner.ValidateExplicit(model.ToPlacementTree(),
                Entries.Select(e => new KeyValuePair<string, DeviceId>(e.Key, DeviceId.Parse(e.Value))).ToList());
        return Entries.Select(e => e.Value).Distinct().ToDictionary(d => d, TorchRuntime.ParseDevice);
    }

    public static string ModuleOf(string tensorKey)
    {
        int dot = tensorKey.LastIndexOf('.');
        return dot < 0 ? "" : tensorKey[..dot];
    }
}
