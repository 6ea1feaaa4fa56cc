using ShardPipe.Modeling.Core;
using System.Runtime.InteropServices;
using ShardPipe.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Quantization;

/// <summary>
/// Reads each format's stored tensors into a <see cref="PackedWeight"/>, following the writers' packing code: AutoGPTQ's
/// <c>QuantLinear.pack</c> (a little-endian bit stream along the input, zeros minus one along the output), AutoAWQ's GEMM
/// pack order [0,2,4,6,1,3,5,7], compressed-tensors' <c>pack_to_int32</c> (codes offset by 2^(bits−1), zero points packed
/// along the output). Codes of 2 and 3 bits are held as 4-bit, others of 5–7 bits as 8-bit.
/// </summary>
public static class Repack
{
    private static readonly int[] AwqSlot = { 0, 4, 1, 5, 2, 6, 3, 7 }; // output 8c+p sits in code AwqSlot[p] of word c

    public static PackedWeight FromStored(QuantizationConfig q, string module, string file, int outF, int inF, IReadOnlyDictionary<string, Tensor> t)
    {
        int heldBits = q.Bits <= 4 ? 4 : 8;
        return q.Format switch
        {
            QuantFormat.Gptq => Gptq(q, module, file, outF, inF, t, heldBits),
            QuantFormat.AwqGemm => Awq(q, outF, inF, t),
            QuantFormat.PackQuantized => PackQuantized(q, module, file, outF, inF, t, heldBits),
            _ => IntQuantized(q, outF, inF, t),
        };
    }

    private static PackedWeight Gptq(QuantizationConfig q, string module, string file, int outF, int inF, IReadOnlyDictionary<string, Tensor> t, int heldBits)
    {
        int bits = q.Bits;
        var qweight = Words(t["qweight"]);
        var qzeros = Words(t["qzeros"]);
        int zeroWords = (int)t["qzeros"].Shape()[1];
        var gIdx = t["g_idx"].data<int>().ToArray();
        int gs = q.GroupSize <= 0 ? inF : q.GroupSize;
        int groups = (inF + gs - 1) / gs;
        foreach (int g in gIdx)
            if (g < 0 || g >= groups)
                throw new CheckpointFormatException(file, module + ".g_idx", $"group {g} is outside [0, {groups}) for group_size {q.GroupSize}");
        int[]? perm = null;
        if (q.DescAct || !gIdx.Select((g, i) => g == i / gs).All(b => b))
        {
            // Act-order: a stable sort by group makes each group's columns contiguous; GPTQ gives each group gs columns.
            perm = Enumerable.Range(0, inF).OrderBy(i => gIdx[i]).ToArray();
            for (int j = 0; j < inF; j++)
                if (gIdx[perm[j]] != j / gs)
                    throw new UnsupportedException($"{file}: '{module}.g_idx' gives groups of unequal sizes (group {gIdx[perm[j]]}); only GPTQ's act-order layout (group_size columns per group) is supported");
        }
        int Q(int i, int o) => (int)StreamCode(qweight, o, outF, bits, i);
        float Zero(int g, int o) => StreamCode(qzeros, (long)g * zeroWords, 1, bits, o) + 1; // stores zero − 1, masked to the bits
        var codes = Pack(heldBits, outF, inF, (o, j) => Q(perm is null ? j : perm[j], o));
        var scales = t["scales"]; // [groups, out]
        var zeros = new float[(long)outF * groups];
        for (int o = 0; o < outF; o++)
            for (int g = 0; g < groups; g++) zeros[(long)o * groups + g] = Zero(g, o);
        return new PackedWeight(heldBits, outF, inF, gs, codes, scales.t().contiguous(), ZerosOrNull(q, zeros, outF, groups, heldBits),
            perm is null ? null : tensor(perm.Select(p => (long)p).ToArray()));
    }

    /// <summary>Code <paramref name="index"/> of a little-endian bit stream whose k-th int32 word is words[start + k·stride]
    /// (AutoGPTQ packs 3-bit codes across word boundaries: qweight down a column, qzeros along a row).</summary>
    private static uint StreamCode(uint[] words, long start, long stride, int bits, int index)
    {
        long bit = (long)index * bits;
        long k = bit / 32;
        int shift = (int)(bit % 32);
        uint v = words[start + k * stride] >> shift;
        if (shift + bits > 32) v |= words[start + (k + 1) * stride] << (32 - shift);
        return v & ((1u << bits) - 1);
    }

    private static PackedWeight Awq(QuantizationConfig q, int outF, int inF, IReadOnlyDictionary<string, Tensor> t)
    {
        var qweight = Words(t["qweight"]);
        var qzeros = Words(t["qzeros"]);
        int cols = outF / 8, gs = q.GroupSize, groups = inF / gs;
        int Code(uint[] w, int r, int o) => (int)((w[(long)r * cols + o / 8] >> (4 * AwqSlot[o % 8])) & 15);
        var codes = Pack(4, outF, inF, (o, i) => Code(qweight, i, o));
        var zeros = new float[(long)outF * groups];
        for (int o = 0; o < outF; o++)
            for (int g = 0; g < groups; g++) zeros[(long)o * groups + g] = Code(qzeros, g, o);
        return new PackedWeight(4, outF, inF, gs, codes, t["scales"].t().contiguous(), ZerosOrNull(q, zeros, outF, groups, 4), null);
    }

    private static PackedWeight PackQuantized(QuantizationConfig q, string module, string file, int outF, int inF, IReadOnlyDictionary<string, Tensor> t, int heldBits)
    {
        var shape = t["weight_shape"].data<long>().ToArray();
        if (shape.Length != 2 || shape[0] != outF || shape[1] != inF)
            throw new CheckpointFormatException(file, module + ".weight_shape", $"says [{string.Join(", ", shape)}], the model's Linear is [{outF}, {inF}]");
        int bits = q.Bits, pf = 32 / bits, gs = q.GroupSize <= 0 ? inF : q.GroupSize, groups = (inF + gs - 1) / gs;
        uint mask = (1u << bits) - 1;
        var packed = t["weight_packed"];
        int wordsPerRow = (int)packed.Shape()[1];
        Tensor codes;
        if (bits == heldBits) codes = packed.detach(); // already our layout: kept as read
        else
        {
            var words = Words(packed);
            codes = Pack(heldBits, outF, inF, (o, i) => (int)((words[(long)o * wordsPerRow + i / pf] >> (i % pf * bits)) & mask));
        }
        var zeros = new float[(long)outF * groups];
        if (t.TryGetValue("weight_zero_point", out var zp))
        {
            var zw = Words(zp); // [⌈out/pf⌉, groups], packed along the output; zero code = zp + 2^(bits−1), as the weight codes
            for (int o = 0; o < outF; o++)
                for (int g = 0; g < groups; g++) zeros[(long)o * groups + g] = (zw[(long)(o / pf) * groups + g] >> (o % pf * bits)) & mask;
        }
        else Array.Fill(zeros, 1 << (bits - 1));
        return new PackedWeight(heldBits, outF, inF, gs, codes, t["weight_scale"].detach(), ZerosOrNull(q, zeros, outF, groups, heldBits), null);
    }

    private static PackedWeight IntQuantized(QuantizationConfig q, int outF, int inF, IReadOnlyDictionary<string, Tensor> t)
    {
        var w = t["weight"].data<sbyte>().ToArray();
        int gs = q.GroupSize <= 0 ? inF : q.GroupSize, groups = (inF + gs - 1) / gs;
        var codes = Pack(8, outF, inF, (o, i) => w[(long)o * inF + i] + 128);
        var zeros = t.TryGetValue("weight_zero_point", out var zp) ? zp.data<float>().Select(z => z + 128).ToArray() : Enumerable.Repeat(128f, outF * groups).ToArray();
        return new PackedWeight(8, outF, inF, gs, codes, t["weight_scale"].detach(), ZerosOrNull(q, zeros, outF, groups, 8), null);
    }

    /// <summary>Codes [out, in] packed as compressed-tensors does (code k of word c is input c·pf + k).</summary>
    public static Tensor Pack(int bits, int outF, int inF, Func<int, int, int> code)
    {
        int pf = 32 / bits, words = (inF + pf - 1) / pf;
        var packed = new int[(long)outF * words];
        Parallel.For(0, outF, o =>
        {
            for (int i = 0; i < inF; i++)
                packed[(long)o * words + i / pf] |= code(o, i) << (i % pf * bits);
        });
        return tensor(packed, new long[] { outF, words });
    }

    /// <summary>Zero points are held as the config says (<see cref="QuantizedLinears.HoldsZeros"/>), and also when a symmetric
    /// checkpoint's stored zeros are not the midpoint after all (correct outputs before an exact plan).</summary>
    private static Tensor? ZerosOrNull(QuantizationConfig q, float[] zeros, int outF, int groups, int heldBits)
    {
        float mid = 1 << (heldBits - 1);
        return !QuantizedLinears.HoldsZeros(q) && zeros.All(z => z == mid) ? null : tensor(zeros, new long[] { outF, groups });
    }

    private static uint[] Words(Tensor t) => MemoryMarshal.Cast<byte, uint>(t.contiguous().bytes).ToArray();
}
