using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Modeling.Core;
using static TorchSharp.torch;

namespace ShardPipe.Actors.Workers;

/// <summary>Tensors to and from <see cref="TensorPayload"/>: one copy each way, straight from and into tensor storage.</summary>
public static class TensorWire
{
    public static TensorPayload ToPayload(Tensor t)
    {
        using var cpu = t.cpu().contiguous();
        return new TensorPayload(DTypes.Code(TorchRuntime.ToDType(cpu.dtype)), cpu.shape, cpu.bytes.ToArray());
    }

    public static Tensor ToTensor(TensorPayload p)
    {
        if (!DTypes.TryParseCode(p.DType, out var dtype)) throw new ProtocolException($"tensor payload has unknown dtype '{p.DType}'");
        long expected = p.Shape.Aggregate((long)DTypes.Size(dtype), (a, b) => checked(a * b));
        if (p.Shape.Any(d => d < 0) || expected != p.Data.LongLength)
            throw new ProtocolException($"tensor payload of shape [{string.Join(", ", p.Shape)}] {p.DType} carries {p.Data.Length} bytes, expected {expected}");
        var t = empty(p.Shape, TorchRuntime.ToScalarType(dtype));
        p.Data.CopyTo(t.bytes);
        return t;
    }

    public static long[][] Rows(Tensor t2) // (B, T) int64 -> rows
    {
        var flat = t2.data<long>().ToArray();
        long b = t2.shape[0], n = t2.shape[1];
        return Enumerable.Range(0, (int)b).Select(i => flat.Skip((int)(i * n)).Take((int)n).ToArray()).ToArray();
    }

    public static Tensor FromRows(long[][] rows) => tensor(rows.SelectMany(r => r).ToArray(), new long[] { rows.Length, rows.Length == 0 ? 0 : rows[0].Length });
}
