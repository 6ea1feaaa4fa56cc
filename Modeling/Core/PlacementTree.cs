using ShardPipe.Checkpoints;
using ShardPipe.Placement;

namespace ShardPipe.Modeling.Core;

/// <summary>The model code's meta tree as the planner's pure data (one source of truth for shapes).</summary>
public static class PlacementTree
{
    public static ModuleNode ToPlacementTree(this HfModule model)
    {
        var nodes = new Dictionary<TensorSlot, TensorNode>(ReferenceEqualityComparer.Instance);
        return Convert(model, nodes);
    }

    private static ModuleNode Convert(HfModule m, Dictionary<TensorSlot, TensorNode> nodes)
    {
        var node = new ModuleNode(m.ClassName);
        // A quantized Linear not loaded yet is counted as it will be held (packed codes, float32 scales), not as stored.
        var quantized = m is Layers.Linear { Quantized: not null } q ? q : null;
        var tensors = quantized is { Quantized.Packed: null } ? Quantization.QuantizedLinears.HeldLayout(quantized) : m.LocalTensors;
        foreach (var (name, slot) in tensors)
        {
            if (!nodes.TryGetValue(slot, out var t))
            {
                var kind = slot.FixedDType switch
                {
                    _ when quantized is not null && !ReferenceEquals(slot, quantized.Bias) => TensorKind.Held,
                    DType.BOOL => TensorKind.Bool,
                    { } d when !DTypes.IsFloating(d) => TensorKind.Int,
                    _ => TensorKind.Float,
                };
                t = new TensorNode(slot.Shape, slot.IsBuffer, kind, slot.FixedDType, slot.Persistent);
                nodes[slot] = t; // a tied slot stays one node, reached under two names
            }
            if (slot.IsBuffer) node.Buffers.Add((name, t));
            else node.Parameters.Add((name, t));
        }
        foreach (var (name, child) in m.Children) node.Children.Add((name, Convert(child, nodes)));
        return node;
    }
}
