using ShardPipe.Modeling.Core;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Generation;

/// <summary>
/// Token ids, attention masks and position ids travel and are kept as rows (<c>long[B][T]</c>); the model takes them
/// as one (B, T) int64 tensor. One home for that conversion, used by the one-process generator and by cluster stages.
/// </summary>
public static class IdRows
{
    public static Tensor ToTensor(long[][] rows) =>
        tensor(rows.SelectMany(r => r).ToArray(), new long[] { rows.Length, rows.Length == 0 ? 0 : rows[0].Length });
}
