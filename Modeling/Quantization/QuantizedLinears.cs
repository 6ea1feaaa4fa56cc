using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Models;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Quantization;

/// <summary>A quantized Linear: the scheme, the stored format's tensors (until loaded), then the packed weight it runs on.</summary>
public sealed class QuantizedState
{
    public required QuantizationConfig Config { get; init; }
    /// <summary>The checkpoint format's tensors by their names (qweight, scales, … or weight_packed, weight_scale, …).</summary>
    public required IReadOnlyList<(string Name, TensorSlot Slot)> Stored { get; init; }
    public PackedWeight? Packed { get; internal set; }
}

/// <summary>
/// Swaps a model's Linears for quantized ones by their HF module names, for any family: <see cref="Install"/> on the meta
/// model gives each targeted Linear the checkpoint format's tensors (so keys, sizes and slices are the packed ones),
/// <see cref="Finish"/> after loading turns them into the in-memory <see cref="PackedWeight"/> and drops the stored form.
/// </summary>
public static class QuantizedLinears
{
    public static void Install(CausalLMModel model, QuantizationConfig q)
    {
        foreach (var (path, module) in model.NamedModules().ToList())
            if (module is Linear linear && q.Quantizes(path, linear.ClassName, model.OutputEmbeddingsPath))
            {
                var stored = StoredTensors(q, linear.OutFeatures, linear.InFeatures);
                linear.Quantized = new QuantizedState { Config = q, Stored = stored };
                linear.SetTensors(linear.Bias is { } b ? stored.Append(("bias", b)) : stored);
            }
    }

    /// <summary>The quantized Linears of a model, by path.</summary>
    public static IEnumerable<(string Path, Linear Linear)> Of(HfModule model) =>
        model.NamedModules().Where(m => m.Module is Linear { Quantized: not null }).Select(m => (m.Path, (Linear)m.Module));

    /// <summary>After loading: each quantized Linear whose stored tensors were read becomes packed; the stored ones are freed.</summary>
    public static void Finish(HfModule model, string file)
    {
        foreach (var (path, linear) in Of(model))
        {
            var state = linear.Quantized!;
            if (state.Packed is not null || !state.Stored.All(s => s.Slot.IsMaterialised)) continue;
            var packed = Repack.FromStored(state.Config, path, file, (int)linear.OutFeatures, (int)linear.InFeatures,
                state.Stored.ToDictionary(s => s.Name, s => s.Slot.Tensor));
            Hold(linear, packed);
            foreach (var (_, slot) in state.Stored) slot.Release();
        }
    }

    /// <summary>A quantized Linear's stored tensor absent from the checkpoint cannot be initialised as a float would be: a typed error.</summary>
    public static void RefuseMissing(HfModule model, IReadOnlyCollection<string> missing)
    {
        if (missing.Count == 0) return;
        var stored = Of(model).SelectMany(l => l.Linear.Quantized!.Stored.Select(s => HfModule.Join(l.Path, s.Name))).ToHashSet(StringComparer.Ordinal);
        var absent = missing.Where(stored.Contains).ToList();
        if (absent.Count > 0)
            throw new LoadingException($"the checkpoint declares quantization_config.quant_method '{Of(model).First().Linear.Quantized!.Config.QuantMethod}' but lacks the quantized tensors [{string.Join(", ", absent.Take(8))}{(absent.Count > 8 ? ", …" : "")}]");
    }

    /// <summary>Installs a packed weight as the Linear's tensors (its packed state dict: codes, scales, zero points, permutation).</summary>
    internal static void Hold(Linear linear, PackedWeight packed)
    {
        var tensors = new List<(string, TensorSlot)> { ("weight_packed", Slot(packed.Codes)), ("weight_scale", Slot(packed.Scales)) };
        if (packed.Zeros is { } z) tensors.Add(("weight_zero_point", Slot(z)));
        if (packed.Perm is { } p) tensors.Add(("weight_perm", Slot(p)));
        if (linear.Bias is { } b) tensors.Add(("bias", b));
        linear.SetTensors(tensors);
        linear.Quantized!.Packed = packed;
    }

    /// <summary>
    /// Installs a packed weight's tensors as the Linear's, left empty: the Linear is offloaded (its packed tensors live in
    /// a file and are set only while it runs, see <c>Loading/PackedOffload</c>). Returns the empty slots by name.
    /// </summary>
    internal static List<(string Name, TensorSlot Slot)> HoldOffloaded(Linear linear, QuantizedState state, PackedWeight shapes)
    {
        TensorSlot Empty(Tensor t) => HfModule.NewParameter(t.Shape(), TorchRuntime.ToDType(t.dtype));
        var tensors = new List<(string Name, TensorSlot Slot)> { ("weight_packed", Empty(shapes.Codes)), ("weight_scale", Empty(shapes.Scales)) };
        if (shapes.Zeros is { } z) tensors.Add(("weight_zero_point", Empty(z)));
        if (shapes.Perm is { } p) tensors.Add(("weight_perm", Empty(p)));
        var held = tensors.ToList();
        if (linear.Bias is { } b) tensors.Add(("bias", b));
        linear.Quantized = state;
        linear.SetTensors(tensors);
        state.Packed = null;
        return held;
    }

    /// <summary>An offloaded Linear's packed weight over its tensors as read in for one call (no copy).</summary>
    internal static PackedWeight Rewrap(Linear linear, int bits, int groupSize, IReadOnlyDictionary<string, Tensor> held) =>
        new(bits, (int)linear.OutFeatures, (int)linear.InFeatures, groupSize, held["weight_packed"], held["weight_scale"],
            held.GetValueOrDefault("weight_zero_point"), held.GetValueOrDefault("weight_perm"));

    private static TensorSlot Slot(Tensor t)
    {
        var slot = HfModule.NewParameter(t.Shape(), TorchRuntime.ToDType(t.dtype));
        slot.Set(t);
        return slot;
    }

    /// <summary>Bits per code held in memory: 2- and 3-bit codes sit in 4-bit fields, 5–7-bit and int8-stored ones in bytes.</summary>
    public static int HeldBits(QuantizationConfig q) => q.Format == QuantFormat.IntQuantized || q.Bits > 4 ? 8 : 4;

    /// <summary>Whether zero points are held (else every zero is the held codes' midpoint, as symmetric schemes store them).</summary>
    public static bool HoldsZeros(QuantizationConfig q) => !q.Symmetric || (q.Format != QuantFormat.IntQuantized && q.Bits != HeldBits(q));

    /// <summary>
    /// The tensors a quantized Linear holds once loaded (as <see cref="Hold"/> installs them), known from the config before
    /// any weight is read: what the planner counts, so a stage holds exactly its planned bytes.
    /// </summary>
    public static List<(string Name, TensorSlot Slot)> HeldLayout(Linear linear)
    {
        var q = linear.Quantized!.Config;
        long inF = linear.InFeatures, outF = linear.OutFeatures;
        long gs = q.GroupSize <= 0 ? inF : Math.Min(q.GroupSize, inF), groups = (inF + gs - 1) / gs, pf = 32 / HeldBits(q);
        var held = new List<(string, TensorSlot)>
        {
            ("weight_packed", HfModule.NewParameter(new[] { outF, (inF + pf - 1) / pf }, DType.I32)),
            ("weight_scale", HfModule.NewParameter(new[] { outF, groups }, DType.F32)),
        };
        if (HoldsZeros(q)) held.Add(("weight_zero_point", HfModule.NewParameter(new[] { outF, groups }, DType.F32)));
        if (q.DescAct) held.Add(("weight_perm", HfModule.NewParameter(new[] { inF }, DType.I64)));
        if (linear.Bias is { } b) held.Add(("bias", b));
        return held;
    }

    /// <summary>The tensors each format stores for a Linear [out, in], at the shapes the tools write.</summary>
    internal static List<(string Name, TensorSlot Slot)> StoredTensors(QuantizationConfig q, long outF, long inF)
    {
        long groups = q.GroupSize <= 0 ? 1 : (inF + q.GroupSize - 1) / q.GroupSize;
        TensorSlot P(DType d, params long[] shape) => HfModule.NewParameter(shape, d);
        long pf = 32 / q.Bits;
        return q.Format switch
        {
            QuantFormat.Gptq => new()
            {
                ("qweight", P(DType.I32, inF * q.Bits / 32, outF)),
                ("qzeros", P(DType.I32, groups, (outF * q.Bits + 31) / 32)),
                ("scales", P(DType.F32, groups, outF)),
                ("g_idx", P(DType.I32, inF)),
            },
            QuantFormat.AwqGemm => new()
            {
                ("qweight", P(DType.I32, inF, outF / 8)),
                ("qzeros", P(DType.I32, groups, outF / 8)),
                ("scales", P(DType.F32, groups, outF)),
            },
            QuantFormat.PackQuantized => q.Symmetric
                ? new() { ("weight_packed", P(DType.I32, outF, (inF + pf - 1) / pf)), ("weight_scale", P(DType.F32, outF, groups)), ("weight_shape", P(DType.I64, 2)) }
                : new()
                {
                    ("weight_packed", P(DType.I32, outF, (inF + pf - 1) / pf)), ("weight_scale", P(DType.F32, outF, groups)), ("weight_shape", P(DType.I64, 2)),
                    ("weight_zero_point", P(DType.I32, (outF + pf - 1) / pf, groups)),
                },
            _ => q.Symmetric
                ? new() { ("weight", P(DType.I8, outF, inF)), ("weight_scale", P(DType.F32, outF, groups)) }
                : new() { ("weight", P(DType.I8, outF, inF)), ("weight_scale", P(DType.F32, outF, groups)), ("weight_zero_point", P(DType.F32, outF, groups)) },
        };
    }
}
