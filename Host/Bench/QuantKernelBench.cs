using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using static TorchSharp.torch;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench quant-kernels</c>: the generated ~134M Llama's Linears alone (every decoder Linear and the untied
/// head, each called once, as a step calls them), in float32, bfloat16 and quantized on load (int8 group 32, int4 group 32
/// and group 128, head included), on one input row (decode), on five (a 4-token speculation's verification pass or a few
/// streams' step: <c>few5_*</c>, the quantized formats also through the per-row path those products took before the
/// few-row kernels, <c>few5_speedup_*</c>) and on <c>--prefill-rows</c> rows (prefill, the
/// dequantize-a-block-then-GEMM path). The float formats are the in-run baselines: quantized decode against bfloat16
/// (what <c>bench decode --speed-only</c>'s int8/int4 speedups divide by), quantized prefill against float32 (the
/// quantized path computes in float32); int4/int8 decode also with the per-row kernels that the four-rows-a-pass ones
/// replaced, int4 also with the four-rows kernel's mask-into-2²³ decoding (rows4_magic) and its permute decoding (rows4_permute: the default since session 12), the paired-layout kernel (the one before the wide layout) and the wide layout's mask-and-convert decoding. Per Linear the fastest of its calls (10 per round decoding, 2 prefilling), summed;
/// best of <c>--rounds</c>, the formats taking turns.
/// </summary>
public static class QuantKernelBench
{
    public static Command Create()
    {
        var rows = new Option<int>("--prefill-rows") { Description = "Input rows of the prefill measurement", DefaultValueFactory = _ => 128 };
        var rounds = new Option<int>("--rounds") { Description = "Rounds (best of)", DefaultValueFactory = _ => 2 };
        var json = CommonOptions.Json();
        var cmd = new Command("quant-kernels", "The model's Linears alone, int8/int4 quantized against float32/bfloat16: one row (decode) and many (prefill)") { rows, rounds, json };
        CommandAction.Set(cmd, (parse, log) => Run(parse.GetValue(rows), parse.GetValue(rounds), parse.GetValue(json), log));
        return cmd;
    }

    private static int Run(int prefillRows, int rounds, bool asJson, ILogger log)
    {
        if (prefillRows < 2) throw new InvalidInputException($"--prefill-rows {prefillRows}: must be ≥ 2 (one row is the decode measurement)");
        if (rounds < 1) throw new InvalidInputException($"--rounds {rounds}: must be ≥ 1");
        string folder = BenchSupport.GeneratedModel("llama-125m", SyntheticLlamaSpec.Llama125M, log);
        BenchSupport.Say(asJson, $"bench quant-kernels: {folder}, Linears on 1 row and on {prefillRows} rows, best of {rounds}");
        var formats = new List<(string Name, CausalLMModel Model)>
        {
            ("fp32", PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { DType = "float32" })),
            ("bf16", PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { DType = "bfloat16" })),
        };
        foreach (var (mode, gs) in new[] { ("int8", 32), ("int4", 32), ("int4", 128) })
            formats.Add(($"{mode}_g{gs}", PreTrainedModel.FromPretrained(folder,
                new FromPretrainedOptions { DType = "bfloat16", Quantize = mode, QuantizeGroupSize = gs, QuantizeHead = true })));
        var figures = new JsonObject { ["bench"] = "quant-kernels", ["prefill_rows"] = prefillRows, ["rounds"] = rounds, ["threads"] = get_num_threads() };
        try
        {
            var decode = formats.ToDictionary(f => f.Name, _ => double.MaxValue);
            var prefill = formats.ToDictionary(f => f.Name, _ => double.MaxValue);
            // The decode kernels beside each other, on the same models in the same rounds: the four-rows-a-pass kernels
            // (QuantDecodeRows, the default) against the per-row kernels they replaced ("per_row": for int4 the wide layout
            // with the permute decoding), and for int4 also the per-row wide kernel's mask-and-convert decoding and the
            // paired layout (what int4 ran before the wide one).
            foreach (var (name, _) in formats.Where(f => f.Name.StartsWith("int")))
                foreach (var (v, _, _, _, _) in Variants(name)) decode[$"{name}_{v}"] = double.MaxValue;
            // A few rows (a 4-token speculation's verification pass), the quantized formats also through the per-row path
            // that such products took before the few-row kernels (ManyRowsEnabled off).
            var few = formats.ToDictionary(f => f.Name, _ => double.MaxValue);
            var fewPerRow = formats.ToDictionary(f => f.Name, _ => double.MaxValue);
            for (int r = 0; r < rounds; r++)
                foreach (var (name, model) in formats)
                {
                    decode[name] = Math.Min(decode[name], LinearsMs(model, 1, 10));
                    prefill[name] = Math.Min(prefill[name], LinearsMs(model, prefillRows, 2));
                    few[name] = Math.Min(few[name], LinearsMs(model, FewRows, 4));
                    if (name.StartsWith("int"))
                    {
                        QuantKernels.ManyRowsEnabled = false;
                        try { fewPerRow[name] = Math.Min(fewPerRow[name], LinearsMs(model, FewRows, 4)); }
                        finally { QuantKernels.ManyRowsEnabled = true; }
                    }
                    foreach (var (v, wide, permute, rows, magic) in Variants(name))
                    {
                        SetKernels(wide, permute, rows, magic);
                        try { decode[$"{name}_{v}"] = Math.Min(decode[$"{name}_{v}"], LinearsMs(model, 1, 10)); }
                        finally { SetKernels(true, true, true, QuantKernels.DefaultNibblesByMagic); }
                    }
                    // The default again after its variants: the first decode figure of a format follows the previous
                    // format's prefill, whose libtorch threads still spin for a while (on the loaded helper machine the
                    // first kernel measured after it, whichever it was, came out ≈ 30 % slower).
                    if (Variants(name).Length > 0) decode[name] = Math.Min(decode[name], LinearsMs(model, 1, 10));
                }
            foreach (var (name, _) in formats)
            {
                figures[$"decode_linear_ms_{name}"] = Math.Round(decode[name], 3);
                figures[$"prefill{prefillRows}_linear_ms_{name}"] = Math.Round(prefill[name], 2);
                BenchSupport.Say(asJson, $"  {name,-9} decode {decode[name],8:0.000} ms/token   prefill {prefill[name],9:0.0} ms ({prefillRows * 1000 / prefill[name],7:0} rows/s)");
            }
            // One cache-resident layer (the first MLP's up projection), its fastest of 300 calls per kernel: the kernels' own
            // arithmetic, which a loaded machine's preemptions do not reach the way they reach a pass over the whole model.
            foreach (var (name, model) in formats.Where(f => f.Name == "bf16" || f.Name.StartsWith("int")))
            {
                var up = model.NamedModules().Where(m => m.Path.EndsWith("mlp.up_proj")).Select(m => m.Module).OfType<Linear>().First();
                using var x1 = randn(1, 1, up.InFeatures).to(model.DType);
                for (int i = 0; i < 300; i++) up.Forward(x1).Dispose(); // warm-up, untimed: the first kernel timed is not the one that pays for it
                foreach (var (v, wide, permute, rows, magic) in Variants(name).Prepend((name.StartsWith("int4") ? "wide" : "default", true, true, true, QuantKernels.DefaultNibblesByMagic)))
                {
                    SetKernels(wide, permute, rows, magic);
                    double best = double.MaxValue;
                    try
                    {
                        for (int i = 0; i < 301; i++)
                        {
                            long t0 = Stopwatch.GetTimestamp();
                            up.Forward(x1).Dispose();
                            if (i > 0) best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalMicroseconds);
                        }
                    }
                    finally { SetKernels(true, true, true, QuantKernels.DefaultNibblesByMagic); }
                    figures[$"one_layer_us_{name}_{v}"] = Math.Round(best, 1);
                    BenchSupport.Say(asJson, $"  {name} one layer {up.OutFeatures}x{up.InFeatures} in cache, {v} kernel: {best:0.0} µs");
                }
            }
            foreach (var (name, _) in formats.Where(f => f.Name.StartsWith("int")))
                foreach (var (v, _, _, _, _) in Variants(name))
                {
                    figures[$"decode_linear_ms_{name}_{v}"] = Math.Round(decode[$"{name}_{v}"], 3);
                    BenchSupport.Say(asJson, $"  {name} decode, {v} kernel: {decode[$"{name}_{v}"]:0.000} ms/token (four rows a pass: {decode[name]:0.000})");
                }
            foreach (var (name, _) in formats)
            {
                figures[$"few{FewRows}_linear_ms_{name}"] = Math.Round(few[name], 3);
                figures[$"few{FewRows}_over_decode_{name}"] = Math.Round(few[name] / decode[name], 3);
                string before = "";
                if (name.StartsWith("int"))
                {
                    figures[$"few{FewRows}_linear_ms_{name}_per_row"] = Math.Round(fewPerRow[name], 3);
                    figures[$"few{FewRows}_speedup_{name}"] = Math.Round(fewPerRow[name] / few[name], 3);
                    before = $"; the per-row path before: {fewPerRow[name]:0.000} ms ({fewPerRow[name] / few[name]:0.00}x slower)";
                }
                BenchSupport.Say(asJson, $"  {name} on {FewRows} rows: {few[name]:0.000} ms, {few[name] / decode[name]:0.00}x one row{before}");
            }
            foreach (var (name, _) in formats.Skip(2))
            {
                figures[$"decode_{name}_over_bf16"] = Math.Round(decode["bf16"] / decode[name], 3);
                figures[$"prefill_{name}_over_fp32"] = Math.Round(prefill["fp32"] / prefill[name], 3);
                BenchSupport.Say(asJson, $"  {name}: decode {decode["bf16"] / decode[name]:0.00}x bf16, prefill {prefill["fp32"] / prefill[name]:0.00}x fp32");
            }
        }
        finally
        {
            foreach (var (_, model) in formats) model.Release();
        }
        BenchSupport.Finish(figures);
        return 0;
    }

    /// <summary>Input rows of the few-row measurement: a verification pass of 4 speculated tokens.</summary>
    private const int FewRows = 5;

    /// <summary>The kernel variants measured beside the default for a format: (name, wide int4 layout, permute decoding in
    /// the per-row kernels, four-rows-a-pass decode kernels, mask-into-2²³ decoding in those).</summary>
    private static (string Name, bool Wide, bool Permute, bool Rows, bool Magic)[] Variants(string format) =>
        format.StartsWith("int4") ? new[] { ("rows4_magic", true, true, true, true), ("rows4_permute", true, true, true, false), ("per_row", true, true, false, false),
            ("paired", false, true, false, false), ("wide_convert", true, false, false, false) }
        : format.StartsWith("int8") ? new[] { ("per_row", true, true, false, false) }
        : [];

    private static void SetKernels(bool wide, bool permute, bool rows, bool magic)
    {
        QuantKernels.NibblesByMagic = magic;
        QuantKernels.WideInt4Enabled = wide;
        QuantKernels.NibblesByPermute = permute;
        QuantKernels.DecodeRowsEnabled = rows;
    }

    /// <summary>
    /// Every Linear of the model (decoder Linears and head) on <paramref name="rows"/> rows of its input width: the sum over
    /// the Linears of each one's fastest call in <paramref name="calls"/> (after a warm-up), in ms. The minimum per Linear
    /// rather than of whole passes, so that a neighbour's burst on a shared machine costs one sample, not the figure.
    /// </summary>
    private static double LinearsMs(CausalLMModel model, int rows, int calls)
    {
        using var noGrad = no_grad();
        var linears = model.NamedModules().Select(m => m.Module).OfType<Linear>()
            .Where(l => l.Quantized?.Packed is not null || l.Weight.IsMaterialised).ToList();
        var inputs = linears.Select(l => l.InFeatures).Distinct().ToDictionary(k => k, k => randn(1, rows, k).to(model.DType));
        try
        {
            var best = new double[linears.Count];
            Array.Fill(best, double.MaxValue);
            for (int r = 0; r <= calls; r++)
                for (int i = 0; i < linears.Count; i++)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    linears[i].Forward(inputs[linears[i].InFeatures]).Dispose();
                    if (r > 0) best[i] = Math.Min(best[i], Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
                }
            return best.Sum();
        }
        finally
        {
            foreach (var x in inputs.Values) x.Dispose();
        }
    }
}
