using System.Runtime.InteropServices;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Modeling.Core;
using static TorchSharp.torch;

namespace ShardPipe.Actors.Transport;

/// <summary>Tensors to and from <see cref="TensorPayload"/>: one copy in all (tensor storage into the frame); the receiver's tensor is built over the frame.</summary>
public static class TensorWire
{
    /// <summary>A payload viewing the tensor's storage (no copy; encoding copies it once into the frame).</summary>
    public static TensorPayload ToPayload(Tensor t) => new(DTypes.Code(TorchRuntime.ToDType(t.dtype)), t.Shape(), TensorMemory.Of(t));

    public static Tensor ToTensor(TensorPayload p)
    {
        if (!DTypes.TryParseCode(p.DType, out var dtype)) throw new ProtocolException($"tensor payload has unknown dtype '{p.DType}'");
        long expected = p.Shape.Aggregate((long)DTypes.Size(dtype), (a, b) => checked(a * b));
        if (p.Shape.Any(d => d < 0) || expected != p.Data.Length)
            throw new ProtocolException($"tensor payload of shape [{string.Join(", ", p.Shape)}] {p.DType} carries {p.Data.Length} bytes, expected {expected}");
        var scalar = TorchRuntime.ToScalarType(dtype);
        // A received frame: the tensor is built over it in place. Anything else (a local message) is copied.
        if (MemoryMarshal.TryGetArray(p.Data, out var segment) && TensorMemory.Over(segment.Array!, segment.Offset, segment.Count, scalar, p.Shape) is { } shared)
            return shared;
        var t = empty(p.Shape, scalar);
        p.Data.Span.CopyTo(t.bytes);
        GC.KeepAlive(p); // the span does not keep the memory's owner alive
        return t;
    }
}
