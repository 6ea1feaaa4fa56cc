using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Quantization;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// GPTQ at 2, 3 and 8 bits written here as AutoGPTQ's <c>QuantLinear.pack</c> lays them out (codes as one little-endian bit
/// stream down each column of qweight, so 3-bit codes straddle words; zero − 1 streamed along each row of qzeros), with
/// zero points and per-channel groups: the loaded model computes exactly what its dequantized weights compute.
/// </summary>
public class GptqLowBitTests
{
    [Theory]
    [InlineData(3, 32)]
    [InlineData(2, 16)]
    [InlineData(3, -1)]
    [InlineData(8, 32)]
    public void Gptq_checkpoint_at_these_bits_computes_its_dequantized_weights(int bits, int groupSize)
    {
        var r = new ReferenceData("llama_untied");
        var dense = PreTrainedModel.FromPretrained(r.Folder);
        using var tmp = new TempDir();
        var sources = new List<TensorSource>();
        var rng = new Random(bits * 100 + groupSize);
        foreach (var (key, slot) in dense.StateDictSlots().ToList())
        {
            string module = key[..key.LastIndexOf('.')];
            var owner = dense.NamedModules().First(m => m.Path == module).Module;
            if (owner is Linear && module != dense.OutputEmbeddingsPath)
            {
                var w = Quantize(slot.Tensor, bits, groupSize, rng, out var tensors);
                foreach (var (name, dt, shape, data) in tensors) sources.Add(TensorSource.FromBytes(module + "." + name, dt, shape, data));
                slot.Set(w); // the dense model now holds exactly what the checkpoint encodes
            }
            else
            {
                var bytes = slot.Tensor.contiguous().bytes.ToArray();
                sources.Add(TensorSource.FromBytes(key, DType.F32, slot.Shape, bytes));
            }
        }
        ShardedWriter.Save(tmp.Path, sources, ByteSize.Parse("200KB"));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(r.Folder, "config.json")))!;
        config["quantization_config"] = new JsonObject
        {
            ["quant_method"] = "gptq", ["bits"] = bits, ["group_size"] = groupSize, ["desc_act"] = false, ["sym"] = false,
            ["checkpoint_format"] = "gptq",
        };
        File.WriteAllText(Path.Combine(tmp.Path, "config.json"), config.ToJsonString());

        var quantized = PreTrainedModel.FromPretrained(tmp.Path);
        Assert.Equal(14, QuantizedLinears.Of(quantized).Count(l => l.Linear.Quantized!.Packed is not null));
        foreach (var c in r.ForwardCases)
        {
            var ids = ReferenceModelTests.Tensor2(ReferenceData.Ints(c["input_ids"]));
            using var scope = NewDisposeScope();
            ReferenceModelTests.AssertClose(dense.Forward(ids).flatten().data<float>().Select(v => (double)v).ToArray(),
                quantized.Forward(ids).flatten().data<float>().ToArray(), 1e-4, $"{bits}-bit group {groupSize}/{c["name"]}");
        }
    }

    /// <summary>Random asymmetric codes for W's shape, scales from W; returns the dequantized weight and GPTQ's tensors.</summary>
    private static Tensor Quantize(Tensor weight, int bits, int groupSize, Random rng, out List<(string, DType, long[], byte[])> tensors)
    {
        int outF = (int)weight.shape[0], inF = (int)weight.shape[1], gs = groupSize <= 0 ? inF : groupSize, groups = inF / gs, levels = 1 << bits;
        var q = new int[inF, outF];
        var z = new int[groups, outF];
        var s = new Half[groups * outF];
        var w = new float[outF * inF];
        float amax = weight.abs().max().item<float>();
        for (int g = 0; g < groups; g++)
            for (int o = 0; o < outF; o++)
            {
                z[g, o] = 1 + rng.Next(levels - 1); // stored as z − 1, which must fit the bits
                s[g * outF + o] = (Half)(amax / levels * (0.5f + (float)rng.NextDouble()));
            }
        for (int i = 0; i < inF; i++)
            for (int o = 0; o < outF; o++)
            {
                q[i, o] = rng.Next(levels);
                w[o * inF + i] = (float)s[i / gs * outF + o] * (q[i, o] - z[i / gs, o]);
            }
        var qweight = new uint[inF * bits / 32 * outF];
        for (int o = 0; o < outF; o++)
            for (int i = 0; i < inF; i++)
            {
                long bit = (long)i * bits;
                int row = (int)(bit / 32), shift = (int)(bit % 32);
                qweight[row * outF + o] |= (uint)q[i, o] << shift;
                if (shift + bits > 32) qweight[(row + 1) * outF + o] |= (uint)q[i, o] >> (32 - shift);
            }
        int zw = (outF * bits + 31) / 32;
        var qzeros = new uint[groups * zw];
        for (int g = 0; g < groups; g++)
            for (int o = 0; o < outF; o++)
            {
                long bit = (long)o * bits;
                int col = (int)(bit / 32), shift = (int)(bit % 32);
                uint v = (uint)(z[g, o] - 1);
                qzeros[g * zw + col] |= v << shift;
                if (shift + bits > 32) qzeros[g * zw + col + 1] |= v >> (32 - shift);
            }
        var gIdx = Enumerable.Range(0, inF).Select(i => i / gs).ToArray();
        tensors = new()
        {
            ("qweight", DType.I32, new long[] { inF * bits / 32, outF }, MemoryMarshal.AsBytes(qweight.AsSpan()).ToArray()),
            ("qzeros", DType.I32, new long[] { groups, zw }, MemoryMarshal.AsBytes(qzeros.AsSpan()).ToArray()),
            ("scales", DType.F16, new long[] { groups, outF }, MemoryMarshal.AsBytes(s.AsSpan()).ToArray()),
            ("g_idx", DType.I32, new long[] { inF }, MemoryMarshal.AsBytes(gIdx.AsSpan()).ToArray()),
        };
        return tensor(w, new long[] { outF, inF });
    }
}
