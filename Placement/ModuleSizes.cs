using ShardPipe.Checkpoints;

namespace ShardPipe.Placement;

/// <summary>
/// Bytes per module, as Accelerate's <c>compute_module_sizes</c> counts them: every unique parameter and every
/// buffer (persistent or not), floats at min(target dtype, own dtype), integers at their own size, bools at
/// 1/8 byte (Accelerate's <c>dtype_byte_size(torch.bool)</c>). A module's size includes its descendants';
/// "" is the whole model. Ordered as Accelerate inserts them.
/// </summary>
public sealed class ModuleSizes
{
    private readonly Dictionary<string, double> _sizes = new(StringComparer.Ordinal);
    private readonly List<string> _order = new();

    public IReadOnlyList<string> Names => _order;

    /// <summary>Size of a module or tensor; 0 for one with no tensors (as Accelerate's defaultdict).</summary>
    public double this[string name] => _sizes.TryGetValue(name, out var v) ? v : 0;

    public bool Contains(string name) => _sizes.ContainsKey(name);

    /// <summary>
    /// One tensor's bytes. Accelerate counts a bool as 1/8 byte; with <paramref name="memoryBytes"/> it counts what
    /// the tensor really takes in memory (one byte per bool), as the cluster planner must when checking budgets.
    /// </summary>
    public static double TensorBytes(TensorNode t, DType? dtype, bool memoryBytes = false)
    {
        double n = t.ElementCount;
        if (t.Kind == TensorKind.Bool) return memoryBytes ? n : n / 8;
        DType own = t.FixedDType ?? DType.F32; // the meta model is built in float32
        if (t.Kind is TensorKind.Int or TensorKind.Held || dtype is null) return n * DTypes.Size(own);
        return n * Math.Min(DTypes.Size(dtype.Value), DTypes.Size(own));
    }

    public static ModuleSizes Compute(ModuleNode model, DType? dtype, bool memoryBytes = false)
    {
        var s = new ModuleSizes();
        foreach (var (key, t) in model.NamedParameters().Concat(model.NamedBuffers()))
        {
            double size = TensorBytes(t, dtype, memoryBytes);
            var parts = key.Split('.');
            for (int i = 0; i <= parts.Length; i++)
            {
                string prefix = string.Join('.', parts, 0, i);
                if (s._sizes.TryGetValue(prefix, out var v)) s._sizes[prefix] = v + size;
                else
                {
                    s._sizes[prefix] = size;
                    s._order.Add(prefix);
                }
            }
        }
        return s;
    }
}
