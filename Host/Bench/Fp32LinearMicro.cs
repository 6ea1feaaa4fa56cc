using System.Diagnostics;
using System.Text.Json.Nodes;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench decode --micro</c>: one float32 Linear of the generated 134M Llama's shapes (768→768, 768→2048,
/// 2048→768, the 768→32000 head) on m input rows, our kernel (<see cref="Fp32Kernels"/>) against libtorch's
/// <c>F.linear</c>, taking turns (median of the rounds each). Each shape is held in enough copies to fill 256 MB, called
/// in turn, so that every call reads its weights from memory as a decode step does, not from the last-level cache.
/// Says up to which m ours beats libtorch on the four shapes together (what sets <see cref="Fp32Kernels.MaxRows"/>).
/// </summary>
public static class Fp32LinearMicro
{
    public static readonly (int In, int Out)[] Shapes = { (768, 768), (768, 2048), (2048, 768), (768, 32000) };

    public static JsonObject Run(IReadOnlyList<int> rows, int rounds, int threads, bool asJson)
    {
        if (rows.Count == 0 || rows.Any(m => m < 1 || m > 4096)) throw new InvalidInputException("--micro-rows: each row count must be 1..4096");
        if (rounds < 1) throw new InvalidInputException("--rounds must be at least 1");
        if (threads < 0 || threads > 1024) throw new InvalidInputException("--micro-threads must be 0 (the default) or 1..1024");
        if (threads > 0) set_num_threads(threads);
        BenchSupport.Say(asJson, $"  {get_num_threads()} threads on each side");
        var figures = new JsonObject();
        var oursTotal = new double[rows.Count];
        var torchTotal = new double[rows.Count];
        foreach (var (inF, outF) in Shapes)
        {
            long bytes = (long)inF * outF * 4;
            int copies = (int)Math.Max(2, (256L << 20) / bytes);
            manual_seed(inF + outF);
            var weights = Enumerable.Range(0, copies).Select(_ => randn(outF, inF)).ToArray();
            try
            {
                var shape = new JsonObject();
                for (int j = 0; j < rows.Count; j++)
                {
                    int m = rows[j];
                    using var x = randn(1, m, inF);
                    double Time(bool ours)
                    {
                        long t0 = Stopwatch.GetTimestamp();
                        foreach (var w in weights)
                            using (var _ = ours ? Fp32Kernels.Linear(x, w, null) : nn.functional.linear(x, w)) { }
                        return Stopwatch.GetElapsedTime(t0).TotalMilliseconds / copies;
                    }
                    Time(true); Time(false); // warm-up
                    var a = new List<double>();
                    var b = new List<double>();
                    for (int r = 0; r < rounds; r++)
                    {
                        a.Add(Time(true));
                        b.Add(Time(false));
                    }
                    double oursMs = Median(a), torchMs = Median(b);
                    oursTotal[j] += oursMs;
                    torchTotal[j] += torchMs;
                    BenchSupport.Say(asJson, $"  Linear {inF}->{outF}, m = {m}: ours {oursMs:0.000} ms, libtorch {torchMs:0.000} ms: {torchMs / oursMs:0.00}x " +
                                             $"(ours reads weights at {bytes / oursMs / 1e6:0.0} GB/s)");
                    shape[$"m{m}"] = new JsonObject
                    {
                        ["ours_ms"] = Math.Round(oursMs, 4),
                        ["libtorch_ms"] = Math.Round(torchMs, 4),
                        ["speedup"] = Math.Round(torchMs / oursMs, 3),
                    };
                }
                figures[$"{inF}x{outF}"] = shape;
            }
            finally
            {
                foreach (var w in weights) w.Dispose();
            }
        }
        // The largest m up to which ours wins on every listed row count (the four shapes' times summed).
        int threshold = 0;
        for (int j = 0; j < rows.Count && oursTotal[j] <= torchTotal[j]; j++) threshold = rows[j];
        var totals = new JsonObject();
        for (int j = 0; j < rows.Count; j++)
        {
            totals[$"m{rows[j]}"] = Math.Round(torchTotal[j] / oursTotal[j], 3);
            BenchSupport.Say(asJson, $"  four shapes together, m = {rows[j]}: ours {oursTotal[j]:0.000} ms, libtorch {torchTotal[j]:0.000} ms: {torchTotal[j] / oursTotal[j]:0.00}x");
        }
        BenchSupport.Say(asJson, $"  ours wins up to m = {threshold} of those measured; Fp32Kernels.MaxRows = {Fp32Kernels.MaxRows}");
        return new JsonObject
        {
            ["bench"] = "decode",
            ["micro_rounds"] = rounds,
            ["micro_threads"] = get_num_threads(),
            ["micro_fp32_linear"] = figures,
            ["micro_fp32_speedup_all_shapes"] = totals,
            ["micro_fp32_ours_wins_up_to_rows"] = threshold,
            ["fp32_max_rows"] = Fp32Kernels.MaxRows,
        };
    }

    private static double Median(List<double> xs)
    {
        xs.Sort();
        return xs[xs.Count / 2];
    }
}
