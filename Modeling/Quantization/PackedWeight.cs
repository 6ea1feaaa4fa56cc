using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Quantization;

/// <summary>
/// A Linear's weight as it is kept in memory once loaded, whatever format it came in: unsigned codes packed along the
/// input within each output row exactly as compressed-tensors' <c>pack_to_int32</c> lays them out (code k of word c is
/// input c·pf + k, low bits first), float32 scales and zero points per (row, group), and — for GPTQ act-order — the
/// input permutation that makes each group's columns contiguous. <c>W[o, perm[j]] = scale[o, j/gs] · (code[o, j] − zero[o, j/gs])</c>,
/// exact in float32 (as the tools dequantize with float32 scales).
/// </summary>
public sealed class PackedWeight
{
    /// <summary>4 (also holds 2- and 3-bit codes) or 8.</summary>
    public int Bits { get; }
    public int Out { get; }
    public int In { get; }
    /// <summary>Inputs per group along the (permuted) input; In for one group per row.</summary>
    public int GroupSize { get; }
    public int Groups => (In + GroupSize - 1) / GroupSize;
    public int CodesPerWord => 32 / Bits;
    public int WordsPerRow => (In + CodesPerWord - 1) / CodesPerWord;
    /// <summary>I32 [Out, WordsPerRow].</summary>
    public Tensor Codes { get; }
    /// <summary>F32 [Out, Groups].</summary>
    public Tensor Scales { get; }
    /// <summary>F32 [Out, Groups]; null = every zero is 2^(Bits−1) (symmetric).</summary>
    public Tensor? Zeros { get; }
    /// <summary>I64 [In]: packed column j holds input Perm[j]; null = identity.</summary>
    public Tensor? Perm { get; }

    private int[]? _gather;
    private Addresses? _addresses;

    /// <summary>
    /// Where <see cref="Codes"/>, <see cref="Scales"/> and <see cref="Zeros"/> (0: none) lie, read once: the tensors are
    /// this weight's own and never move. A decode step calls its kernels ~85 times a token, and each reading of a
    /// tensor's address is a few native calls into a TensorImpl that, with the weights streaming past, is no longer in
    /// the cache (≈ 3 % of an int4 step's main thread in a <c>perf</c> profile).
    /// </summary>
    internal sealed record Addresses(nint Codes, nint Scales, nint Zeros);

    internal unsafe Addresses Memory => _addresses ??= new Addresses((nint)Core.TensorMemory.Pointer(Codes),
        (nint)Core.TensorMemory.Pointer(Scales), Zeros is null ? 0 : (nint)Core.TensorMemory.Pointer(Zeros));

    public PackedWeight(int bits, int outFeatures, int inFeatures, int groupSize, Tensor codes, Tensor scales, Tensor? zeros, Tensor? perm)
    {
        if (bits is not (4 or 8)) throw new ArgumentOutOfRangeException(nameof(bits));
        Bits = bits;
        Out = outFeatures;
        In = inFeatures;
        GroupSize = groupSize <= 0 ? inFeatures : Math.Min(groupSize, inFeatures);
        Codes = codes;
        Scales = scales;
        Zeros = zeros;
        Perm = perm;
    }

    public float MidZero => 1 << (Bits - 1);

    /// <summary>Bytes held: codes, scales, zeros, permutation.</summary>
    public long Bytes => Codes.NumberOfElements * 4 + Scales.NumberOfElements * 4 + (Zeros?.NumberOfElements ?? 0) * 4 + (Perm?.NumberOfElements ?? 0) * 8;

    /// <summary>The input index each packed column reads (length WordsPerRow·CodesPerWord; −1 past the end).</summary>
    internal int[] Gather
    {
        get
        {
            if (_gather is { } g) return g;
            int kp = WordsPerRow * CodesPerWord;
            var gather = new int[kp];
            var perm = Perm is null ? null : Perm.data<long>().ToArray();
            for (int j = 0; j < kp; j++) gather[j] = j >= In ? -1 : perm is null ? j : (int)perm[j];
            // The kernels read input gather[j] by address: a permutation from a peer or a file must stay inside the row.
            for (int j = 0; j < In && perm is not null; j++)
                if (perm[j] < 0 || perm[j] >= In)
                    throw new ShapeMismatchException($"packed weight [{Out}, {In}]: input permutation entry {j} is {perm[j]}, outside [0, {In})");
            return _gather = gather;
        }
    }

    /// <summary>The code of row o, packed column j.</summary>
    public static int Code(ReadOnlySpan<uint> words, int wordsPerRow, int bits, int o, int j)
    {
        int pf = 32 / bits;
        return (int)((words[o * wordsPerRow + j / pf] >> (j % pf * bits)) & ((1u << bits) - 1));
    }

    /// <summary>W [Out, In] in float32 (for checks, saving as floats, and the sums of the reference).</summary>
    public Tensor Dequantize()
    {
        var w = new float[(long)Out * In];
        var words = MemoryMarshal.Cast<byte, uint>(Codes.bytes);
        var s = MemoryMarshal.Cast<byte, float>(Scales.bytes);
        var z = Zeros is null ? default : MemoryMarshal.Cast<byte, float>(Zeros.bytes);
        var gather = Gather;
        int g = Groups, wpr = WordsPerRow;
        for (int o = 0; o < Out; o++)
            for (int j = 0; j < In; j++)
            {
                int gr = j / GroupSize;
                float zero = Zeros is null ? MidZero : z[o * g + gr];
                w[(long)o * In + gather[j]] = s[o * g + gr] * (Code(words, wpr, Bits, o, j) - zero);
            }
        return tensor(w, new long[] { Out, In });
    }

}
