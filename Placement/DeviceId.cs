using System.Globalization;
using ShardPipe.Checkpoints;

namespace ShardPipe.Placement;

/// <summary>
/// A device: <c>cpu</c>, <c>cuda:N</c> (an int N means cuda:N, as in HF), <c>disk</c>, optionally qualified by
/// its cluster node as <c>node/device</c> (node names contain no '/'). Parsing and printing round-trip.
/// </summary>
public sealed record DeviceId(string? Node, string Kind, int Index = 0) : IComparable<DeviceId>
{
    public static readonly DeviceId Cpu = new(null, "cpu");
    public static readonly DeviceId Disk = new(null, "disk");
    public static DeviceId Cuda(int index, string? node = null) => new(node, "cuda", index);

    public bool IsGpu => Kind == "cuda";

    public static DeviceId Parse(string text)
    {
        string s = text.Trim();
        string? node = null;
        int slash = s.IndexOf('/');
        if (slash >= 0)
        {
            node = s[..slash];
            s = s[(slash + 1)..];
            if (node.Length == 0 || s.Contains('/')) throw new FormatException($"'{text}' is not a device: use node/device with a node name free of '/'");
        }
        if (int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int idx)) return new DeviceId(node, "cuda", idx);
        if (s == "cpu") return new DeviceId(node, "cpu");
        if (s == "disk") return new DeviceId(node, "disk");
        if (s == "cuda") return new DeviceId(node, "cuda", 0);
        if (s.StartsWith("cuda:", StringComparison.Ordinal) &&
            int.TryParse(s[5..], NumberStyles.None, CultureInfo.InvariantCulture, out int ci)) return new DeviceId(node, "cuda", ci);
        throw new FormatException($"'{text}' is not a device: use cpu, disk, cuda:N, N, or node/device");
    }

    /// <summary>The canonical text: <c>cuda:0</c>, <c>cpu</c>, <c>w2/cuda:1</c>.</summary>
    public override string ToString()
    {
        string local = Kind == "cuda" ? $"cuda:{Index}" : Kind;
        return Node is null ? local : $"{Node}/{local}";
    }

    /// <summary>As Accelerate writes it in a device map: a GPU index as an int, else the name (node-qualified devices stay strings).</summary>
    public object ToHfValue() => Node is null && Kind == "cuda" ? Index : ToString();

    /// <summary>get_max_memory's order: GPUs by index, then cpu, then disk (per node, nodes in given order).</summary>
    public int CompareTo(DeviceId? other)
    {
        if (other is null) return 1;
        int rank(DeviceId d) => d.Kind switch { "cuda" => 0, "cpu" => 1, _ => 2 };
        int c = rank(this).CompareTo(rank(other));
        return c != 0 ? c : Index.CompareTo(other.Index);
    }
}

/// <summary>Per-device memory budgets: <c>max_memory</c>.</summary>
public static class MaxMemory
{
    /// <summary>Parses "0=2MiB,1=2MiB,cpu=10MiB" (keys: ints, cuda:N, cpu, disk, node/device; values: bytes or size strings).</summary>
    public static List<(DeviceId Device, double Bytes)> Parse(string spec)
    {
        var list = new List<(DeviceId, double)>();
        foreach (var part in spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = part.LastIndexOf('=');
            if (eq <= 0) throw new FormatException($"max_memory entry '{part}' is not DEVICE=SIZE");
            var device = DeviceId.Parse(part[..eq]);
            long bytes = ByteSize.TryParse(part[(eq + 1)..], out long b) ? b
                : throw new FormatException($"max_memory for {device}: '{part[(eq + 1)..]}' is not a size (e.g. 10GiB, 500MB, 2GB, 1024)");
            if (list.Any(e => e.Item1 == device)) throw new FormatException($"max_memory lists {device} twice");
            list.Add((device, bytes));
        }
        return list;
    }

    /// <summary>get_max_memory: GPUs sorted by index first, then cpu, then disk.</summary>
    public static List<(DeviceId Device, double Bytes)> Ordered(IEnumerable<(DeviceId Device, double Bytes)> budgets) =>
        budgets.OrderBy(b => b.Device).ToList();

    /// <summary>What the CPU can give: available RAM minus a 10% safety margin.</summary>
    public static long DefaultCpuBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    return (long)(long.Parse(line[13..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024 * 0.9);
        }
        catch (IOException) { }
        return (long)(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes * 0.9);
    }
}
