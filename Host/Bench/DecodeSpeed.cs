using System.Diagnostics;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Host.Bench;

/// <summary>
/// Single-stream decode speed against the machine's read bandwidth, for <c>bench decode</c>: float32, bfloat16, int8 and
/// int4 tokens/s of the plain loop (taking turns, best of each), each round beside a STREAM-like sum of a 2 GiB buffer on
/// the decode threads (<see cref="ReadBandwidth.Probe"/>; the read ratios pair each round's decode with its own baseline,
/// median of the rounds), and a profile of one decode step by part.
/// </summary>
public static class DecodeSpeed
{
    public sealed record Result(double Fp32TokensPerS, double Bf16TokensPerS, long Fp32WeightBytes, double ReadGBps,
        IReadOnlyDictionary<string, double> Fp32Profile, IReadOnlyDictionary<string, double> Bf16Profile,
        double Int8TokensPerS, double Int4TokensPerS, long Int8WeightBytes, long Int4WeightBytes)
    {
        /// <summary>Parameters a decode token reads (a mixture of experts: only the chosen experts'); all of them for a dense model.</summary>
        public long ActiveParameters { get; init; }
        public long TotalParameters { get; init; }
        /// <summary>
        /// Active weight bytes read per second at the bfloat16 decode rate over the plain read's bandwidth, each round's
        /// decode over the read measured just before it (<see cref="RoundBaselines"/>), median of the rounds: the
        /// machine's bandwidth drifts (28–48 GB/s between runs in session 11), and a pair taken seconds apart shares it.
        /// </summary>
        public double ActiveWeightReadRatioBf16 => PairedRatio(ActiveParameters * 2.0, RoundBf16TokensPerS);
        /// <summary>The same at the float32 rate.</summary>
        public double ActiveWeightReadRatioFp32 => PairedRatio(ActiveParameters * 4.0, RoundFp32TokensPerS);
        /// <summary>The lowest and highest of the rounds' bfloat16 ratios.</summary>
        public (double Min, double Max) ActiveWeightReadRatioBf16Range => PairedRange(ActiveParameters * 2.0, RoundBf16TokensPerS);
        /// <summary>Each round's sum-read baseline (GB/s, median of its passes), and its float32 and bfloat16 decode rates.</summary>
        public IReadOnlyList<double> RoundBaselines { get; init; } = Array.Empty<double>();
        public IReadOnlyList<double> RoundFp32TokensPerS { get; init; } = Array.Empty<double>();
        public IReadOnlyList<double> RoundBf16TokensPerS { get; init; } = Array.Empty<double>();
        public IReadOnlyList<double> RoundInt8TokensPerS { get; init; } = Array.Empty<double>();
        public IReadOnlyList<double> RoundInt4TokensPerS { get; init; } = Array.Empty<double>();
        private IEnumerable<double> Paired(double bytesPerToken, IReadOnlyList<double> rates) =>
            rates.Count == RoundBaselines.Count && rates.Count > 0
                ? rates.Zip(RoundBaselines, (tps, gbps) => bytesPerToken * tps / (gbps * 1e9))
                : new[] { bytesPerToken * (rates.Count > 0 ? rates.Max() : 0) / (ReadGBps * 1e9) };
        private double PairedRatio(double bytesPerToken, IReadOnlyList<double> rates) => Bench.ReadBandwidth.Median(Paired(bytesPerToken, rates).ToList());
        private (double, double) PairedRange(double bytesPerToken, IReadOnlyList<double> rates) { var r = Paired(bytesPerToken, rates).ToList(); return (r.Min(), r.Max()); }
        /// <summary>The range of the rounds' read baselines (<see cref="ReadGBps"/> is their median).</summary>
        public double ReadGBpsMin => RoundBaselines.Count > 0 ? RoundBaselines.Min() : ReadGBps;
        public double ReadGBpsMax => RoundBaselines.Count > 0 ? RoundBaselines.Max() : ReadGBps;
        public double Int8Speedup => Int8TokensPerS / Bf16TokensPerS;
        public double Int4Speedup => Int4TokensPerS / Bf16TokensPerS;
        /// <summary>As <see cref="WeightReadRatio"/>, over the quantized model's held bytes (packed Linears, bf16 rest).</summary>
        public double Int8ReadRatio => PairedRatio(Int8WeightBytes, RoundInt8TokensPerS);
        public double Int4ReadRatio => PairedRatio(Int4WeightBytes, RoundInt4TokensPerS);
        /// <summary>Weight bytes read per second at the float32 decode rate, over the plain read's bandwidth.</summary>
        public double WeightReadRatio => PairedRatio(Fp32WeightBytes, RoundFp32TokensPerS);
        public double Bf16Speedup => Bf16TokensPerS / Fp32TokensPerS;
        /// <summary>Milliseconds per token in the model's Linears alone (<see cref="LinearMs"/>); a step's rest is attention, norms, rotary, sampling.</summary>
        public double Bf16LinearMs { get; init; }
        public double Int8LinearMs { get; init; }
        public double Int4LinearMs { get; init; }
        /// <summary>Milliseconds per token outside the Linears: 1000 / tokens/s − the Linears' time (a floor under every dtype's step).</summary>
        public double Bf16OutsideLinearMs => 1000 / Bf16TokensPerS - Bf16LinearMs;
        public double Int4OutsideLinearMs => 1000 / Int4TokensPerS - Int4LinearMs;
    }

    private static readonly long[][] Prompt = { new long[] { 1, 306, 4658, 278, 6593, 310, 2834, 338, 1, 306, 4658, 278, 6593, 310, 2834, 338 } };

    public static Result Measure(string folder, int newTokens, int rounds = 5, int groupSize = 128, bool quantizeHead = true)
    {
        var fp32 = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { DType = "float32" });
        var bf16 = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { DType = "bfloat16" });
        // Quantized on load from the same weights, every Linear and the untied head (as llama.cpp's Q4_0/Q8_0 files are);
        // embeddings and norms in bfloat16.
        var int8 = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { DType = "bfloat16", Quantize = "int8", QuantizeGroupSize = groupSize, QuantizeHead = quantizeHead });
        var int4 = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { DType = "bfloat16", Quantize = "int4", QuantizeGroupSize = groupSize, QuantizeHead = quantizeHead });
        try
        {
            double Tps(CausalLMModel m) => TokenGenerator.Greedy(m, Prompt, null, new GenerationOptions { MaxNewTokens = newTokens, IgnoreEos = true }).TokensPerSecond;
            var baselines = new List<double>();
            var fp32Rates = new List<double>();
            var bf16Rates = new List<double>();
            var int8Rates = new List<double>();
            var int4Rates = new List<double>();
            using (var probe = new ReadBandwidth.Probe())
            {
                for (int r = 0; r < rounds; r++)
                {
                    baselines.Add(probe.SumMedianGBps(3)); // the read baseline beside this round's decodes
                    fp32Rates.Add(Tps(fp32));
                    bf16Rates.Add(Tps(bf16));
                    int8Rates.Add(Tps(int8));
                    int4Rates.Add(Tps(int4));
                }
            }
            static long Bytes(CausalLMModel m) => m.NamedTensors().Where(p => !p.Slot.IsBuffer && p.Slot.IsMaterialised).Sum(p => p.Slot.Tensor.NumberOfElements * p.Slot.Tensor.ElementSize);
            long bytes = Bytes(fp32);
            return new Result(fp32Rates.Max(), bf16Rates.Max(), bytes, ReadBandwidth.Median(baselines), Profile(fp32, newTokens), Profile(bf16, newTokens), int8Rates.Max(), int4Rates.Max(), Bytes(int8), Bytes(int4))
            {
                RoundBaselines = baselines,
                RoundFp32TokensPerS = fp32Rates,
                RoundBf16TokensPerS = bf16Rates,
                RoundInt8TokensPerS = int8Rates,
                RoundInt4TokensPerS = int4Rates,
                ActiveParameters = fp32.ActiveParameters(),
                TotalParameters = fp32.NumParameters(),
                Bf16LinearMs = LinearMs(bf16),
                Int8LinearMs = LinearMs(int8),
                Int4LinearMs = LinearMs(int4),
            };
        }
        finally
        {
            fp32.Release();
            bf16.Release();
            int8.Release();
            int4.Release();
        }
    }

    /// <summary>
    /// Milliseconds per token spent in the model's Linears alone: each called once on one row of its input width in the
    /// model's dtype, as a decode step calls them (best of rounds). Against the step time it says how much of a token is
    /// the weights' products and how much the rest, which no weight format speeds up.
    /// </summary>
    public static double LinearMs(CausalLMModel model, int rounds = 8)
    {
        using var noGrad = no_grad();
        var linears = model.NamedModules().Select(m => m.Module).OfType<Linear>()
            .Where(l => l.Quantized?.Packed is not null || l.Weight.IsMaterialised).ToList();
        var inputs = linears.Select(l => randn(1, 1, l.InFeatures).to(model.DType)).ToList();
        try
        {
            double best = double.MaxValue;
            for (int r = 0; r < rounds + 1; r++) // one warm-up
            {
                long t0 = Stopwatch.GetTimestamp();
                for (int i = 0; i < linears.Count; i++) linears[i].Forward(inputs[i]).Dispose();
                if (r > 0) best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            }
            return best;
        }
        finally
        {
            foreach (var x in inputs) x.Dispose();
        }
    }


    /// <summary>Milliseconds per decode step by part: embedding, layer inputs (mask, rotary), each decoder layer, final norm, head.</summary>
    private static Dictionary<string, double> Profile(CausalLMModel model, int steps)
    {
        using var noGrad = no_grad();
        using var cache = new KvCache();
        using (var prompt = tensor(Prompt[0], new long[] { 1, Prompt[0].Length })) model.Forward(prompt, null, null, cache, lastOnly: true).Dispose();
        var times = new Dictionary<string, double>();
        void Time(string part, Action a)
        {
            long t0 = Stopwatch.GetTimestamp();
            a();
            times[part] = times.GetValueOrDefault(part) + Stopwatch.GetElapsedTime(t0).TotalMilliseconds / steps;
        }
        using var token = tensor(new long[] { 42 }, new long[] { 1, 1 });
        for (int s = 0; s < steps; s++)
        {
            using var scope = NewDisposeScope();
            long past = cache.SeenTokens(0);
            var positions = tensor(new[] { past }, new long[] { 1, 1 });
            Tensor hidden = null!;
            LayerInputs inputs = null!;
            Time("embed", () => hidden = model.Embed(token, positions));
            Time("layer inputs", () => inputs = model.PrepareLayerInputs(positions, null, past, 1, hidden.dtype, CPU, cache, 0));
            for (int i = 0; i < model.NumLayers; i++) Time($"layer {i}", () => hidden = model.Layer(i, hidden, inputs));
            Time("final norm", () => hidden = model.FinalNorm(hidden));
            Time("head", () => hidden = model.Project(hidden));
            inputs.Dispose();
        }
        return times;
    }
}
