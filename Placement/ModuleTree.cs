using ShardPipe.Checkpoints;

namespace ShardPipe.Placement;

/// <summary>
/// What kind of element a tensor holds; Accelerate sizes floats at the target dtype and leaves the rest alone.
/// <see cref="Held"/>: kept at its own dtype whatever the load dtype (a quantized weight's codes and float32 scales).
/// </summary>
public enum TensorKind { Float, Int, Bool, Held }

/// <summary>A parameter or buffer as the planner sees it: shape, kind, and its own dtype where fixed. Compared by reference (a tied weight is one node).</summary>
public sealed record TensorNode(long[] Shape, bool IsBuffer, TensorKind Kind, DType? FixedDType, bool Persistent)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));
}

/// <summary>
/// A module of the model as the planner sees it: HF class name, own parameters and buffers, children — all in
/// registration order. Built from the model code's own meta tree; no weights, no TorchSharp. A tied parameter
/// is one <see cref="TensorNode"/> instance reachable under two names.
/// </summary>
public sealed class ModuleNode
{
    public string ClassName { get; }
    public List<(string Name, TensorNode Tensor)> Parameters { get; } = new();
    public List<(string Name, TensorNode Tensor)> Buffers { get; } = new();
    public List<(string Name, ModuleNode Module)> Children { get; } = new();

    public ModuleNode(string className) => ClassName = className;

    public IEnumerable<(string Path, ModuleNode Module)> NamedModules(string prefix = "")
    {
        yield return (prefix, this);
        foreach (var (name, child) in Children)
            foreach (var m in child.NamedModules(Join(prefix, name)))
                yield return m;
    }

    /// <summary><c>named_parameters()</c>: a tied parameter once, under its first name.</summary>
    public IEnumerable<(string Key, TensorNode Tensor)> NamedParameters(bool removeDuplicate = true)
    {
        var seen = new HashSet<TensorNode>(ReferenceEqualityComparer.Instance);
        foreach (var (path, m) in NamedModules())
            foreach (var (name, p) in m.Parameters)
                if (!removeDuplicate || seen.Add(p))
                    yield return (Join(path, name), p);
    }

    public IEnumerable<(string Key, TensorNode Tensor)> NamedBuffers()
    {
        foreach (var (path, m) in NamedModules())
            foreach (var (name, b) in m.Buffers)
                yield return (Join(path, name), b);
    }

    public ModuleNode? Find(string path)
    {
        if (path.Length == 0) return this;
        var node = this;
        foreach (var part in path.Split('.'))
        {
            var next = node.Children.FirstOrDefault(c => c.Name == part).Module;
            if (next is null) return null;
            node = next;
        }
        return node;
    }

    /// <summary>Groups of parameter names that share one tensor (<c>find_tied_parameters</c>), each sorted.</summary>
    public List<List<string>> TiedParameters()
    {
        var groups = new Dictionary<TensorNode, List<string>>(ReferenceEqualityComparer.Instance);
        foreach (var (key, t) in NamedParameters(removeDuplicate: false))
        {
            if (!groups.TryGetValue(t, out var list)) groups[t] = list = new List<string>();
            list.Add(key);
        }
        return groups.Values.Where(g => g.Count > 1).Select(g => g.Order(StringComparer.Ordinal).ToList()).ToList();
    }

    public static string Join(string prefix, string name) => prefix.Length == 0 ? name : prefix + "." + name;
}
