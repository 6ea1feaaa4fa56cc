using ShardPipe.Modeling.Quantization;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Support;

/// <summary>A packed int4/int8 weight of random codes for the kernel tests: codes and zero points from <c>rng</c>, scales in
/// [0.01, 0.11) from libtorch's generator, an act-order permutation of the inputs when asked — drawn in that order.</summary>
public static class RandomPackedWeight
{
    public static PackedWeight Create(Random rng, int bits, int outF, int inF, int groupSize, bool permute, bool zeros)
    {
        int gs = groupSize <= 0 ? inF : Math.Min(groupSize, inF), groups = (inF + gs - 1) / gs;
        var codes = Repack.Pack(bits, outF, inF, (_, _) => rng.Next(1 << bits));
        var scales = rand(outF, groups) * 0.1 + 0.01;
        var zp = zeros ? tensor(Enumerable.Range(0, outF * groups).Select(_ => (float)rng.Next(1 << bits)).ToArray(), new long[] { outF, groups }) : null;
        var perm = permute ? tensor(Enumerable.Range(0, inF).OrderBy(_ => rng.Next()).Select(i => (long)i).ToArray()) : null;
        return new PackedWeight(bits, outF, inF, groupSize, codes, scales, zp, perm);
    }
}
