using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Quantization;

/// <summary>
/// Quantize on load (<c>--quantize int8|int4</c>): every Linear but the output head, round-to-nearest, symmetric, per group
/// of inputs (−1: per output channel), as compressed-tensors' W4A16/W8A16 schemes compute it: scale = max|w| / ((2^b − 1)/2)
/// (at least float32 eps), q = clamp(round(w / scale), −2^(b−1), 2^(b−1) − 1). The scale is rounded to the model's dtype
/// first, because that is the dtype <c>save</c> writes it in: a saved model loads back with identical outputs.
/// </summary>
public static class RoundToNearest
{
    /// <summary>"int8" or "int4" → bits; anything else is a typed error naming the option.</summary>
    public static int Bits(string method) => method switch
    {
        "int8" => 8,
        "int4" => 4,
        _ => throw new InvalidInputException($"quantize '{method}': use int8 or int4"),
    };

    /// <summary>The bits of a quantize-on-load request; a method other than int8/int4 or a group size other than a positive one or −1 is a typed error.</summary>
    public static int Check(string method, int groupSize)
    {
        int bits = Bits(method);
        if (groupSize == 0 || groupSize < -1) throw new InvalidInputException($"quantize group size {groupSize}: use a positive size or -1 (per channel)");
        return bits;
    }

    /// <summary>The compressed-tensors config that describes the result (what llm-compressor writes for W4A16 / W8A16).</summary>
    public static QuantizationConfig Scheme(int bits, int groupSize, IReadOnlyList<string> ignore) =>
        QuantizationConfig.From(new PretrainedConfig(new System.Text.Json.Nodes.JsonObject
        {
            ["quantization_config"] = CompressedTensorsConfig.Json(bits, groupSize, symmetric: true, ignore),
        }))!;

    /// <param name="head">Also the output head when it has its own weight (llama.cpp's habit; Hugging Face keeps it in float).</param>
    public static void QuantizeModel(CausalLMModel model, string method, int groupSize, DType scaleDType, bool head = false)
    {
        var (bits, scheme, linears) = Targets(model, method, groupSize, head);
        foreach (var (path, linear) in linears)
        {
            if (!linear.Weight.IsMaterialised) continue; // another stage's slice
            var packed = Quantize(linear.Weight.Tensor, bits, groupSize, scaleDType);
            linear.Quantized = new QuantizedState { Config = scheme, Stored = Array.Empty<(string, TensorSlot)>() };
            QuantizedLinears.Hold(linear, packed);
            linear.Weight.Release();
        }
    }

    /// <summary>
    /// For planning a cluster load that quantizes on load: marks the meta model's targeted Linears as quantized with no
    /// packed weight yet, so the placement tree counts them as they will be held (<see cref="QuantizedLinears.HeldLayout"/>).
    /// Checks the request as <see cref="QuantizeModel"/> does, before anything is loaded.
    /// </summary>
    public static void PlanModel(CausalLMModel meta, string method, int groupSize, bool head)
    {
        var (_, scheme, linears) = Targets(meta, method, groupSize, head);
        foreach (var (_, linear) in linears) linear.Quantized = new QuantizedState { Config = scheme, Stored = Array.Empty<(string, TensorSlot)>() };
    }

    /// <summary>The placement tree of <paramref name="model"/> with the Linears quantize on load targets counted packed; the
    /// model is left as it was (its Linears load as floats and are packed after, <see cref="QuantizeModel"/>).</summary>
    public static ShardPipe.Placement.ModuleNode PlanTree(CausalLMModel model, string method, int groupSize, bool head)
    {
        var (_, scheme, linears) = Targets(model, method, groupSize, head);
        try
        {
            foreach (var (_, linear) in linears) linear.Quantized = new QuantizedState { Config = scheme, Stored = Array.Empty<(string, TensorSlot)>() };
            return model.ToPlacementTree();
        }
        finally
        {
            foreach (var (_, linear) in linears) linear.Quantized = null;
        }
    }

    /// <summary>The bits, the compressed-tensors scheme, and the Linears a quantize-on-load request packs (every one but the
    /// output head, and the head too when asked and untied); a bad request or an already quantized model is a typed error.</summary>
    /// <param name="loaded">The resident Linears were quantized already (a disk-offloaded model's remaining Linears): not an error.</param>
    internal static (int Bits, QuantizationConfig Scheme, List<(string Path, Linear Linear)> Linears) Targets(CausalLMModel model, string method, int groupSize, bool head, bool loaded = false)
    {
        int bits = Check(method, groupSize);
        if (!loaded && QuantizedLinears.Of(model).Any()) throw new InvalidInputException($"quantize {method}: the checkpoint is already quantized (config.json has a quantization_config)");
        var tied = model.NamedModules().First(m => m.Path == model.InputEmbeddingsPath).Module.LocalTensors.Select(t => t.Slot).ToHashSet(ReferenceEqualityComparer.Instance);
        bool Quantized(string path, Linear l) => path != model.OutputEmbeddingsPath || (head && !tied.Contains(l.Weight));
        var linears = model.NamedModules().Where(m => m.Module is Linear l && Quantized(m.Path, l)).Select(m => (m.Path, (Linear)m.Module)).ToList();
        var ignore = model.NamedModules().Where(m => m.Module is Linear l && !Quantized(m.Path, l)).Select(m => m.Path).ToList();
        return (bits, Scheme(bits, groupSize, ignore), linears);
    }

    /// <summary>W [out, in] → packed codes and scales (symmetric: no zero points).</summary>
    public static PackedWeight Quantize(Tensor weight, int bits, int groupSize, DType scaleDType)
    {
        int outF = (int)weight.Shape()[0], inF = (int)weight.Shape()[1], gs = groupSize <= 0 ? inF : groupSize;
        int[] codes;
        Tensor scale;
        using (var scope = NewDisposeScope())
        {
            int groups = (inF + gs - 1) / gs; // a last group shorter than the others, as compressed-tensors' ceil(in / group_size)
            var w = weight.to(ScalarType.Float32);
            if (groups * gs != inF) w = nn.functional.pad(w, new long[] { 0, groups * gs - inF }); // zeros change no max
            w = w.view(outF, groups, gs);
            double qmin = -(1 << (bits - 1)), qmax = (1 << (bits - 1)) - 1;
            var s = (w.abs().amax(new long[] { -1 }) / ((qmax - qmin) / 2.0)).clamp_min(FloatEps);
            s = s.to(TorchRuntime.ToScalarType(scaleDType)).to(ScalarType.Float32).contiguous(); // [out, groups]
            var q = (w / s.unsqueeze(-1)).round().clamp(qmin, qmax).add(1 << (bits - 1)).to(ScalarType.Int32).view(outF, groups * gs)
                .narrow(1, 0, inF).contiguous();
            codes = q.data<int>().ToArray();
            scale = s.MoveToOuterDisposeScope();
        }
        var packed = Repack.Pack(bits, outF, inF, (o, i) => codes[(long)o * inF + i]);
        return new PackedWeight(bits, outF, inF, gs, packed, scale, null, null);
    }

    private const double FloatEps = 1.1920928955078125e-07; // torch.finfo(torch.float32).eps
}
