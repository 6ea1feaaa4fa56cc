using ShardPipe.Modeling.Core;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// The additive 4-D attention mask HF builds: (B, 1, Tq, Tk) with 0 where a query may attend and the dtype's
/// most negative finite value where it may not (causal order, left padding, and Mistral's sliding window:
/// a query at index q sees keys k with q − window &lt; k ≤ q). Indices count every token in the cache,
/// padding included, as HF's cache positions do.
/// </summary>
public static class AttentionMask
{
    public static double MinValue(ScalarType dtype) => dtype switch
    {
        ScalarType.Float16 => -65504.0,
        ScalarType.BFloat16 => -3.3895313892515355e38,
        ScalarType.Float64 => double.MinValue,
        _ => float.MinValue,
    };

    /// <summary>Null when nothing needs masking beyond plain causal order with no history (sdpa's is_causal covers it).</summary>
    public static Tensor? Build(Tensor? mask2d, long batch, long queryLength, long pastLength, long? slidingWindow,
        ScalarType dtype, Device device, out bool isPlainCausal)
    {
        long keyLength = pastLength + queryLength;
        bool windowMatters = slidingWindow is { } w && keyLength > w;
        bool hasPadding = mask2d is not null && mask2d.eq(0).any().item<bool>();
        isPlainCausal = !hasPadding && !windowMatters && pastLength == 0;
        if (!hasPadding && !windowMatters && queryLength == 1) return null; // one new token sees everything
        using var scope = NewDisposeScope();
        var q = arange(pastLength, keyLength, dtype: ScalarType.Int64, device: device).unsqueeze(1); // (Tq, 1)
        var k = arange(0, keyLength, dtype: ScalarType.Int64, device: device).unsqueeze(0);          // (1, Tk)
        var allowed = k.le(q);
        using TorchSharp.Scalar window = slidingWindow ?? 0; // held until the call returns, as the fill value below
        if (slidingWindow is not null) allowed = allowed.logical_and(k.gt(q - window));
        var allowed4 = allowed.unsqueeze(0).unsqueeze(0).expand(batch, 1, queryLength, keyLength);
        if (hasPadding)
        {
            var keep = mask2d!.to(device).narrow(1, mask2d.Shape()[1] - keyLength, keyLength).ne(0).unsqueeze(1).unsqueeze(1); // (B,1,1,Tk)
            allowed4 = allowed4.logical_and(keep);
        }
        // The fill value as a Scalar held until the call returns: an implicit conversion's temporary is unreachable once its
        // handle is read, and a garbage collection during the native call could finalize it (seen once in CI: libtorch's
        // Scalar tag assert under masked_fill while other tests ran).
        using TorchSharp.Scalar fill = MinValue(dtype);
        var additive = zeros(new[] { batch, 1, queryLength, keyLength }, dtype, device)
            .masked_fill(allowed4.logical_not(), fill);
        return additive.MoveToOuterDisposeScope();
    }
}
