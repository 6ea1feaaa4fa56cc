using static TorchSharp.torch;

namespace ShardPipe.Modeling.Core;

/// <summary>
/// A tensor's sizes without TorchSharp's <c>shape</c> property: that one has libtorch call back into managed code to
/// allocate a pinned array, ≈ 2 µs a call on this machine, and a decode step read shapes a hundred-odd times
/// (≈ 9 % of an int4 step's main thread in a <c>perf</c> profile). <c>dim()</c> and <c>size(i)</c> are plain native
/// calls of ≈ 0.02 µs each. The hot paths (layers, kernels, generation, the workers' stage runs) use these.
/// </summary>
public static class TensorShape
{
    /// <summary>The sizes of every dimension, as <c>t.shape</c> gives them.</summary>
    public static long[] Shape(this Tensor t)
    {
        int n = (int)t.dim();
        if (n == 0) return Array.Empty<long>();
        var sizes = new long[n];
        for (int i = 0; i < n; i++) sizes[i] = t.size(i);
        return sizes;
    }
}
