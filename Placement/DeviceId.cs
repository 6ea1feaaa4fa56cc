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
            if (node.Length == 0 || s.Contains('/')) throw new InvalidInputException($"'{text}' is not a device: use node/device with a node name free of '/'");
        }
        if (int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int idx)) return new DeviceId(node, "cuda", idx);
        if (s == "cpu") return new DeviceId(node, "cpu");
        if (s == "disk") return new DeviceId(node, "disk");
        if (s == "cuda") return new DeviceId(node, "cuda", 0);
        if (s.StartsWith("cuda:", StringComparison.Ordinal) &&
            int.TryParse(s[5..], NumberStyles.None, CultureInfo.InvariantCulture, out int ci)) return new DeviceId(node, "cuda", ci);
        throw new InvalidInputException($"'{text}' is not a device: use cpu, disk, cuda:N, N, or node/device");
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
