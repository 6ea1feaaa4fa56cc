using System.Runtime.InteropServices;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// A Llama-family block over decode rows (<see cref="LlamaDecodeLayer"/>: the same kernels without the module
/// scaffolding) gives the generic block's bits: several requests of different pasts decoding together, one of them
/// with a verification's three positions, through every layer, for float32 and bf16 models (grouped-query attention, a
/// sliding window, Qwen2's biases) and int4/int8 weights quantized on load with float32 and bf16 activations. The
/// caches of the two runs are separate; a step's logits and every cached key must be equal bit for bit, and the path
/// must have run (its per-thread count).
/// </summary>
public class LlamaDecodeLayerTests
{
    public static IEnumerable<object?[]> Cases() => new[]
    {
        new object?[] { "llama_untied", null, null }, new object?[] { "mistral_window", null, null }, new object?[] { "qwen2", null, null },
        new object?[] { "llama_bf16", null, null }, new object?[] { "qwen2", null, "bfloat16" }, new object?[] { "llama_untied", "int4", "bfloat16" }, new object?[] { "llama_untied", "int4", "float32" },
        new object?[] { "qwen2", "int8", "bfloat16" }, new object?[] { "mistral", "int8", "float32" },
        // 256 wide: int4 takes its decode kernels (the reference models' 64 inputs are narrower than a 128-code block)
        new object?[] { Synthetic, "int4", "bfloat16" }, new object?[] { Synthetic, "int4", "float32" }, new object?[] { Synthetic, "int8", "bfloat16" },
        new object?[] { Synthetic, null, "bfloat16" },
    };

    private const string Synthetic = "synthetic 256";

    private sealed class Request(long[] ids)
    {
        public long[] Ids = ids;
        public readonly KvCache Cache = new();
    }

    /// <summary>One step of every request (<paramref name="next"/>: its new positions) through all layers as one ragged batch; the flat logits.</summary>
    private static float[] Step(CausalLMModel model, IReadOnlyList<Request> requests, IReadOnlyList<long[]> next)
    {
        using var scope = NewDisposeScope();
        var inputs = new List<LayerInputs>();
        var hidden = new List<Tensor>();
        for (int i = 0; i < requests.Count; i++)
        {
            long past = requests[i].Cache.SeenTokens(0);
            var positions = IdRows.ToTensor(new[] { Enumerable.Range(0, next[i].Length).Select(t => past + t).ToArray() });
            hidden.Add(model.Embed(IdRows.ToTensor(new[] { next[i] }), positions));
            inputs.Add(model.PrepareLayerInputs(positions, null, past, next[i].Length, hidden[i].dtype, CPU, requests[i].Cache, 0));
        }
        var batch = new RaggedBatch(requests.Select((r, i) => (1L, (long)next[i].Length, inputs[i])));
        var flat = cat(hidden.Select(h => h.reshape(-1, h.shape[2])).ToArray(), 0);
        for (int l = 0; l < model.NumLayers; l++) flat = model.Layer(l, flat, batch);
        var logits = model.Project(model.FinalNorm(flat)).to(ScalarType.Float32).contiguous();
        foreach (var li in inputs) li.Dispose();
        for (int i = 0; i < requests.Count; i++) requests[i].Ids = requests[i].Ids.Concat(next[i]).ToArray();
        var values = MemoryMarshal.Cast<byte, float>(logits.bytes).ToArray();
        GC.KeepAlive(logits);
        return values;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Decode_rows_through_the_fused_block_give_the_generic_blocks_bits(string name, string? quantize, string? dtype)
    {
        using var tmp = new TempDir();
        string folder = name == Synthetic ? tmp.Sub("llama") : TestPaths.Model(name);
        if (name == Synthetic)
            ShardPipe.Checkpoints.Synthetic.SyntheticLlama.Write(folder, new ShardPipe.Checkpoints.Synthetic.SyntheticLlamaSpec
            {
                HiddenSize = 256, IntermediateSize = 512, NumLayers = 2, NumHeads = 4, NumKeyValueHeads = 2, VocabSize = 384, MaxPositions = 256, Seed = 5,
            });
        var model = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { Quantize = quantize, DType = dtype, QuantizeGroupSize = quantize == "int4" ? 128 : 32 });
        try
        {
            using var noGrad = no_grad();
            long vocab = model.VocabSize;
            long[] Tokens(int length, int seed) => Enumerable.Range(0, length).Select(i => (long)((i * 31 + seed * 17 + 5) % vocab)).ToArray();
            int[] prompts = { 3, 9, 20 };
            List<Request> Requests() => prompts.Select(_ => new Request(Array.Empty<long>())).ToList();
            var fused = Requests();
            var generic = Requests();
            var firstStep = prompts.Select((n, i) => Tokens(n, i)).ToList();
            bool enabled = LlamaDecodeLayer.Enabled;
            try
            {
                long taken = 0;
                for (int step = 0; step < 4; step++)
                {
                    // After the prompts: one position per request, and request 1 a verification's three from step 2 on.
                    var next = step == 0 ? firstStep : fused.Select((r, i) => Tokens(i == 1 && step >= 2 ? 3 : 1, step * 5 + i)).ToList();
                    LlamaDecodeLayer.Enabled = true;
                    long before = LlamaDecodeLayer.TakenOnThisThread;
                    var a = Step(model, fused, next);
                    taken += LlamaDecodeLayer.TakenOnThisThread - before;
                    LlamaDecodeLayer.Enabled = false;
                    var b = Step(model, generic, next);
                    int differ = a.Zip(b).Count(p => BitConverter.SingleToInt32Bits(p.First) != BitConverter.SingleToInt32Bits(p.Second));
                    Assert.True(differ == 0, $"{name} {quantize} {dtype}, step {step}: {differ} of {a.Length} logits differ");
                    Assert.Equal(step == 0 ? 0 : model.NumLayers, LlamaDecodeLayer.TakenOnThisThread - before); // prompts go the generic way, decode steps this one
                }
                Assert.Equal(3L * model.NumLayers, taken);
                for (int i = 0; i < fused.Count; i++)
                    for (int l = 0; l < model.NumLayers; l++)
                    {
                        long length = fused[i].Cache.SeenTokens(l);
                        Assert.Equal(length, generic[i].Cache.SeenTokens(l));
                        var (ka, va) = fused[i].Cache.Read(l, 0, length);
                        var (kb, vb) = generic[i].Cache.Read(l, 0, length);
                        Assert.True(ka.eq(kb).all().item<bool>() && va.eq(vb).all().item<bool>(), $"request {i}, layer {l}: the cached keys or values differ");
                    }
            }
            finally { LlamaDecodeLayer.Enabled = enabled; }
            foreach (var r in fused.Concat(generic)) r.Cache.Dispose();
        }
        finally { model.Release(); }
    }
}
