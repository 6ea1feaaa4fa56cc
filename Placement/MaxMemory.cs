using System.Globalization;
using ShardPipe.Checkpoints;

namespace ShardPipe.Placement;

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
            if (eq <= 0) throw new InvalidInputException($"max_memory entry '{part}' is not DEVICE=SIZE");
            var device = DeviceId.Parse(part[..eq]);
            long bytes = ByteSize.TryParse(part[(eq + 1)..], out long b) ? b
                : throw new InvalidInputException($"max_memory for {device}: '{part[(eq + 1)..]}' is not a size (e.g. 10GiB, 500MB, 2GB, 1024)");
            if (list.Any(e => e.Item1 == device)) throw new InvalidInputException($"max_memory lists {device} twice");
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
