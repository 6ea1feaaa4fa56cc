using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Quantization;

/// <summary>
/// Saving a quantized model as compressed-tensors <c>pack-quantized</c>, the format llm-compressor writes and transformers
/// loads: per Linear <c>weight_packed</c> (I32), <c>weight_scale</c>, <c>weight_shape</c> (I64) and, when not symmetric,
/// <c>weight_zero_point</c> packed along the output; config.json's <c>quantization_config</c> as compressed-tensors 0.12.2 writes it.
/// </summary>
public static class CompressedTensorsConfig
{
    public static JsonObject Json(int bits, int groupSize, bool symmetric, IEnumerable<string> ignore) => new()
    {
        ["config_groups"] = new JsonObject
        {
            ["group_0"] = new JsonObject
            {
                ["format"] = "pack-quantized",
                ["input_activations"] = null,
                ["output_activations"] = null,
                ["targets"] = new JsonArray("Linear"),
                ["weights"] = new JsonObject
                {
                    ["actorder"] = null,
                    ["block_structure"] = null,
                    ["dynamic"] = false,
                    ["group_size"] = groupSize > 0 ? groupSize : null,
                    ["num_bits"] = bits,
                    ["observer"] = "minmax",
                    ["observer_kwargs"] = new JsonObject(),
                    ["strategy"] = groupSize > 0 ? "group" : "channel",
                    ["symmetric"] = symmetric,
                    ["type"] = "int",
                },
            },
        },
        ["format"] = "pack-quantized",
        ["global_compression_ratio"] = null,
        ["ignore"] = new JsonArray(ignore.Select(i => (JsonNode)JsonValue.Create(i)!).ToArray()),
        ["kv_cache_scheme"] = null,
        ["quant_method"] = "compressed-tensors",
        ["quantization_status"] = "compressed",
        ["sparsity_config"] = new JsonObject(),
        ["transform_config"] = new JsonObject(),
        ["version"] = "0.12.2",
    };

    /// <summary>The quantization_config for a model's packed Linears (one scheme for all), or null when none is quantized.</summary>
    public static JsonObject? ForModel(CausalLMModel model)
    {
        var packed = QuantizedLinears.Of(model).Select(l => (l.Path, W: l.Linear.Quantized!.Packed ?? throw new UnsupportedException($"save: {l.Path} is not loaded"))).ToList();
        if (packed.Count == 0) return null;
        var scheme = QuantizedLinears.Of(model).First().Linear.Quantized!.Config;
        int bits = packed[0].W.Bits, groupSize = scheme.GroupSize;
        foreach (var (path, linear) in QuantizedLinears.Of(model))
        {
            var w = linear.Quantized!.Packed!;
            if (w.Perm is not null) throw new UnsupportedException($"save: {path} has act-order (g_idx) groups, which pack-quantized saving does not write yet");
            if (w.Bits != bits || linear.Quantized.Config.GroupSize != groupSize)
                throw new UnsupportedException($"save: {path} is quantized unlike {packed[0].Path} (one scheme per model is written)");
        }
        bool symmetric = packed.All(p => p.W.Zeros is null);
        var ignore = model.NamedModules().Where(m => m.Module is Linear { Quantized: null }).Select(m => m.Path);
        return Json(bits, groupSize, symmetric, ignore);
    }

    /// <summary>A packed Linear's tensors in the saved layout; scales in <paramref name="scaleDType"/> when that is exact, else float32.</summary>
    public static IEnumerable<TensorSource> Tensors(string path, PackedWeight w, DType scaleDType, bool symmetric)
    {
        string P(string n) => path + "." + n;
        var codes = w.Codes;
        yield return new TensorSource(P("weight_packed"), DType.I32, codes.shape, dst => codes.bytes.CopyTo(dst));
        var st = TorchRuntime.ToScalarType(scaleDType);
        DType scaleAs;
        using (var round = w.Scales.to(st).to(ScalarType.Float32)) scaleAs = round.eq(w.Scales).all().item<bool>() ? scaleDType : DType.F32;
        var scales = w.Scales;
        yield return new TensorSource(P("weight_scale"), scaleAs, scales.shape, dst =>
        {
            using var cast = scales.to(TorchRuntime.ToScalarType(scaleAs)).contiguous();
            cast.bytes.CopyTo(dst);
        });
        yield return new TensorSource(P("weight_shape"), DType.I64, new long[] { 2 }, dst =>
            MemoryMarshal.Cast<long, byte>(new long[] { w.Out, w.In }).CopyTo(dst));
        if (symmetric) yield break;
        int pf = 32 / w.Bits, groups = w.Groups;
        var zeros = w.Zeros is null ? Enumerable.Repeat(w.MidZero, w.Out * groups).ToArray() : w.Zeros.data<float>().ToArray();
        if (zeros.Any(z => z != Math.Floor(z) || z < 0 || z >= 1 << w.Bits))
            throw new UnsupportedException($"save: {path}'s zero points do not fit {w.Bits}-bit codes");
        var packedZeros = new int[(w.Out + pf - 1) / pf * groups];
        for (int o = 0; o < w.Out; o++)
            for (int g = 0; g < groups; g++) packedZeros[o / pf * groups + g] |= (int)zeros[o * groups + g] << (o % pf * w.Bits);
        yield return new TensorSource(P("weight_zero_point"), DType.I32, new long[] { (w.Out + pf - 1) / pf, groups }, dst =>
            MemoryMarshal.Cast<int, byte>(packedZeros).CopyTo(dst));
    }
}
