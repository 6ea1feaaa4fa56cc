using ShardPipe.Actors.Diagnostics;
using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Workers;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench decode</c>: greedy decode on a generated 125M-parameter Llama, in one run: a plain
/// single-process TorchSharp loop; the same model on 1 embedded node (single_node_ratio); on 3 nodes against 1
/// (per_hop_ms over the node boundaries a token crosses; both clusters with their steps on one core, then both
/// unpinned, reported as *_unpinned; and pinned under mutual TLS, *_tls); and m requests in flight over p = 2 stages, one compute
/// thread each, against one request at a time (microbatch_ratio_vs_ideal, ideal = p·m/(m+p−1)).
/// </summary>
public static class DecodeBench
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Checkpoint folder, or a synth preset name such as mixtral-300m (default: a generated 125M Llama)" };
        var tokens = new Option<int>("--tokens") { Description = "New tokens per generation", DefaultValueFactory = _ => 32 };
        var micro = new Option<int>("--microbatches") { Description = "Requests in flight for the micro-batching figure (m)", DefaultValueFactory = _ => 4 };
        var pin = new Option<int>("--pin-core") { Description = "Core that the per-hop figure's nodes run their steps on (shardpipe.compute-cores)", DefaultValueFactory = _ => 0 };
        var speedOnly = new Option<bool>("--speed-only") { Description = "Only the single-process figures (float32, bfloat16, int8, int4, weight_read_ratio, profile); no clusters" };
        var speculate = new Option<bool>("--speculate") { Description = "Only speculative decoding (ngram, --num-speculative-tokens) on 3 embedded nodes against plain: verify_pass_over_step, ngram_acceptance, ngram_speedup (default --tokens 256)" };
        var specTokens = new Option<int>("--num-speculative-tokens") { Description = "Draft tokens per step with --speculate", DefaultValueFactory = _ => 4 };
        var microOnly = new Option<bool>("--micro") { Description = "Only one float32 Linear of the 134M Llama's shapes on m rows, our kernel against libtorch (--micro-rows, --rounds); no model, no clusters" };
        var microRows = new Option<int[]>("--micro-rows") { Description = "Row counts m for --micro", DefaultValueFactory = _ => new[] { 1, 2, 5, 8, 16, 24, 32, 48, 64 }, AllowMultipleArgumentsPerToken = true };
        var microRounds = new Option<int>("--rounds") { Description = "Rounds per figure for --micro (median)", DefaultValueFactory = _ => 7 };
        var microThreads = new Option<int>("--micro-threads") { Description = "Threads for --micro, both sides (libtorch's intra-op setting, which our kernel follows); 0 keeps the default", DefaultValueFactory = _ => 0 };
        var layoutMicro = new Option<bool>("--layout-micro") { Description = "Only one decode step's float32 products of the 134M Llama from memory on m rows (--micro-rows, default 1 5 16; --rounds, default 21): the shipped kernels against a weight-packed k-major candidate layout (Fp32LayoutMicro); no model, no clusters" };
        var draftModel = new Option<string?>("--draft-model") { Description = "With --speculate, also a draft model's run against plain: a folder, \"self\" (the target as its own draft) or \"layers:L\" (the target's first L layers with its embeddings, norm and head): draft_acceptance, draft_speedup" };
        var json = CommonOptions.Json();
        var cmd = new Command("decode", "Decode tokens/s: float32, bfloat16, int8 and int4 (quantized on load) against read bandwidth, single process vs 1 and 3 embedded nodes, and micro-batching over 2 stages")
            { model, tokens, micro, pin, speedOnly, speculate, specTokens, microOnly, microRows, microRounds, microThreads, layoutMicro, draftModel, json };
        CommandAction.Set(cmd, async (parse, log) =>
        {
            if (parse.GetValue(microOnly))
            {
                BenchSupport.Say(parse.GetValue(json), "bench decode --micro: one float32 Linear, ours against libtorch");
                BenchSupport.Finish(Fp32LinearMicro.Run(parse.GetValue(microRows) ?? Array.Empty<int>(), parse.GetValue(microRounds), parse.GetValue(microThreads), parse.GetValue(json)));
                return 0;
            }
            if (parse.GetValue(layoutMicro))
            {
                BenchSupport.Say(parse.GetValue(json), "bench decode --layout-micro: one decode step's float32 products, the shipped kernels against a k-major candidate layout");
                var rows = parse.GetResult(microRows) is { Implicit: false } ? parse.GetValue(microRows) ?? Array.Empty<int>() : new[] { 1, 5, 16 };
                int rounds = parse.GetResult(microRounds) is { Implicit: false } ? parse.GetValue(microRounds) : 21;
                BenchSupport.Finish(Fp32LayoutMicro.Run(rows, rounds, parse.GetValue(json)));
                return 0;
            }
            if (!parse.GetValue(speculate) && parse.GetValue(draftModel) is not null) throw new InvalidInputException("--draft-model goes with --speculate");
            if (!parse.GetValue(speculate)) return await Run(parse.GetValue(model), parse.GetValue(tokens), parse.GetValue(micro), parse.GetValue(pin), parse.GetValue(speedOnly), parse.GetValue(json), log);
            int k = parse.GetValue(specTokens);
            ShardPipe.Modeling.Generation.Speculation.Validate(ShardPipe.Modeling.Generation.Speculation.Ngram, k, 1);
            int n = parse.GetResult(tokens) is { Implicit: false } ? parse.GetValue(tokens) : 256;
            if (n < 2) throw new InvalidInputException("--tokens must be at least 2");
            string folder = parse.GetValue(model) is { } d ? ModelLocator.Locate(d) : BenchSupport.GeneratedModel("llama-125m", SyntheticLlamaSpec.Llama125M, log);
            string? draft = parse.GetValue(draftModel) switch
            {
                null => null,
                "self" => folder,
                var layers when layers.StartsWith("layers:", StringComparison.Ordinal) => int.TryParse(layers["layers:".Length..], out int l)
                    ? LayerSkipDraft.Write(folder, l, Path.Combine(Path.GetTempPath(), "shardpipe-bench", $"{Path.GetFileName(Path.TrimEndingDirectorySeparator(folder))}-layers-{l}"))
                    : throw new InvalidInputException($"--draft-model {layers}: layers:L takes a number of layers"),
                var named => Path.GetFullPath(ModelLocator.Locate(named)),
            };
            if (draft is not null) ShardPipe.Modeling.Generation.DraftModelCheck.Validate(folder, draft);
            BenchSupport.Say(parse.GetValue(json), $"bench decode --speculate: {folder}, {n} new tokens, greedy, EOS ignored{(draft is null ? "" : $"; draft model {draft}")}");
            var figures = await SpeculationBench.Run(folder, n, k, rounds: 3, parse.GetValue(json), draft);
            figures["bench"] = "decode";
            BenchSupport.Finish(figures);
            return 0;
        });
        return cmd;
    }

    private static readonly long[][] Prompt = { new long[] { 1, 306, 4658, 278, 6593, 310, 2834, 338 } };

    private static async Task<int> Run(string? modelArg, int n, int m, int pinCore, bool speedOnly, bool asJson, ILogger log)
    {
        string folder = modelArg switch
        {
            null => BenchSupport.GeneratedModel("llama-125m", SyntheticLlamaSpec.Llama125M, log),
            "mixtral-300m" when !Directory.Exists(modelArg) => BenchSupport.GeneratedModel("mixtral-300m", SyntheticLlamaSpec.Mixtral300M, log),
            var d => ModelLocator.Locate(d),
        };
        BenchSupport.Say(asJson, $"bench decode: {folder}, {n} new tokens, greedy, EOS ignored");

        // 0. Single-stream speed against the read bandwidth: float32 and bfloat16 in turns, and where a step's time goes.
        var speed = DecodeSpeed.Measure(folder, Math.Max(n, 64));
        BenchSupport.Say(asJson, $"  plain float32 {speed.Fp32TokensPerS:0.00} tokens/s, bfloat16 {speed.Bf16TokensPerS:0.00} ({speed.Bf16Speedup:0.00}x); " +
                                 $"read bandwidth {speed.ReadGBps:0.0} GB/s (rounds {speed.ReadGBpsMin:0.0}–{speed.ReadGBpsMax:0.0}), weights {speed.Fp32WeightBytes / 1e6:0} MB: weight_read_ratio {speed.WeightReadRatio:0.000}; " +
                                 $"bfloat16 over active bytes {speed.ActiveWeightReadRatioBf16:0.000} (rounds {speed.ActiveWeightReadRatioBf16Range.Min:0.000}–{speed.ActiveWeightReadRatioBf16Range.Max:0.000}), each round over the read measured beside it");
        if (speed.ActiveParameters != speed.TotalParameters)
            BenchSupport.Say(asJson, $"  active parameters {speed.ActiveParameters / 1e6:0.0}M of {speed.TotalParameters / 1e6:0.0}M: " +
                                     $"weight_read_ratio over active bytes {speed.ActiveWeightReadRatioFp32:0.000} float32, {speed.ActiveWeightReadRatioBf16:0.000} bfloat16");
        BenchSupport.Say(asJson, $"  int8 {speed.Int8TokensPerS:0.00} tokens/s ({speed.Int8Speedup:0.00}x bf16, weight_read_ratio {speed.Int8ReadRatio:0.000} over {speed.Int8WeightBytes / 1e6:0} MB), " +
                                 $"int4 {speed.Int4TokensPerS:0.00} ({speed.Int4Speedup:0.00}x bf16, {speed.Int4ReadRatio:0.000} over {speed.Int4WeightBytes / 1e6:0} MB); group 128, quantized on load with the head");
        BenchSupport.Say(asJson, $"  Linears alone: bf16 {speed.Bf16LinearMs:0.000}, int8 {speed.Int8LinearMs:0.000}, int4 {speed.Int4LinearMs:0.000} ms per token; " +
                                 $"outside the Linears: bf16 {speed.Bf16OutsideLinearMs:0.000}, int4 {speed.Int4OutsideLinearMs:0.000} ms per token");
        foreach (var (name, profile) in new[] { ("float32", speed.Fp32Profile), ("bfloat16", speed.Bf16Profile) })
            BenchSupport.Say(asJson, $"  profile {name} (ms per token): {string.Join(", ", Group(profile).Select(kv => $"{kv.Key} {kv.Value:0.000}"))}");
        var speedFigures = new JsonObject
        {
            ["plain_tokens_per_s_fp32"] = Math.Round(speed.Fp32TokensPerS, 3),
            ["plain_tokens_per_s_bf16"] = Math.Round(speed.Bf16TokensPerS, 3),
            ["bf16_speedup"] = Math.Round(speed.Bf16Speedup, 4),
            ["weight_bytes_fp32"] = speed.Fp32WeightBytes,
            ["read_bandwidth_gb_s"] = Math.Round(speed.ReadGBps, 3),
            // The rounds' baselines (read_bandwidth_gb_s is their median) and the range of the paired bf16 ratios.
            ["read_bandwidth_gb_s_min"] = Math.Round(speed.ReadGBpsMin, 3),
            ["read_bandwidth_gb_s_max"] = Math.Round(speed.ReadGBpsMax, 3),
            ["weight_read_ratio_active_bf16_min"] = Math.Round(speed.ActiveWeightReadRatioBf16Range.Min, 4),
            ["weight_read_ratio_active_bf16_max"] = Math.Round(speed.ActiveWeightReadRatioBf16Range.Max, 4),
            ["weight_read_ratio"] = Math.Round(speed.WeightReadRatio, 4),
            ["parameters"] = speed.TotalParameters,
            ["active_parameters"] = speed.ActiveParameters,
            // Over the bytes a token actually reads (a mixture of experts: the chosen experts only; a dense model: all).
            ["weight_read_ratio_active_fp32"] = Math.Round(speed.ActiveWeightReadRatioFp32, 4),
            ["weight_read_ratio_active_bf16"] = Math.Round(speed.ActiveWeightReadRatioBf16, 4),
            ["profile_fp32_ms"] = Json(Group(speed.Fp32Profile)),
            ["profile_bf16_ms"] = Json(Group(speed.Bf16Profile)),
            ["int8_tokens_per_s"] = Math.Round(speed.Int8TokensPerS, 3),
            ["int4_tokens_per_s"] = Math.Round(speed.Int4TokensPerS, 3),
            ["int8_speedup_vs_bf16"] = Math.Round(speed.Int8Speedup, 4),
            ["int4_speedup_vs_bf16"] = Math.Round(speed.Int4Speedup, 4),
            ["weight_bytes_int8"] = speed.Int8WeightBytes,
            ["weight_bytes_int4"] = speed.Int4WeightBytes,
            ["weight_read_ratio_int8"] = Math.Round(speed.Int8ReadRatio, 4),
            ["weight_read_ratio_int4"] = Math.Round(speed.Int4ReadRatio, 4),
            // The Linears alone per token, and the rest of a step (attention, norms, rotary, sampling): the rest caps int*_speedup_vs_bf16.
            ["linear_ms_per_token_bf16"] = Math.Round(speed.Bf16LinearMs, 4),
            ["linear_ms_per_token_int8"] = Math.Round(speed.Int8LinearMs, 4),
            ["linear_ms_per_token_int4"] = Math.Round(speed.Int4LinearMs, 4),
            ["outside_linear_ms_per_token_bf16"] = Math.Round(speed.Bf16OutsideLinearMs, 4),
            ["outside_linear_ms_per_token_int4"] = Math.Round(speed.Int4OutsideLinearMs, 4),
        };
        if (speedOnly)
        {
            speedFigures["bench"] = "decode";
            BenchSupport.Finish(speedFigures);
            return 0;
        }

        // 1–2. A plain single-process loop (no actors) and the same model on 1 embedded node, both with all cores,
        //      taking turns (best of 4 each), so that drift on this shared machine hits both alike.
        int cores = Environment.ProcessorCount;
        var (plain, one) = await PlainBesideOneNode(folder, n, cores);
        BenchSupport.Say(asJson, $"  single process:   {plain:0.00} tokens/s");
        BenchSupport.Say(asJson, $"  1 embedded node:  {one:0.00} tokens/s (ratio {one / plain:0.000})");
        // 3. 3 nodes in this process split the cores (what an embedded cluster does); the hop cost is measured against
        //    1 node given the same per-node threads, so that only the hops differ (see HopsSideBySide).
        //    Three embedded nodes stand for three machines, but here they share this VM's cores: measured with every
        //    node's steps pinned to one core (the 1-node cluster too), so that the difference is the hops and not the
        //    VM moving the pipeline's work between cores; then the same unpinned, for comparison.
        int perNode = Math.Max(1, cores / 3);
        var pinned = await HopsSideBySide(folder, n, perNode, rounds: 8, $"shardpipe.compute-cores = [{pinCore}]");
        Report(asJson, $"pinned to core {pinCore}", perNode, pinned);
        var unpinned = await HopsSideBySide(folder, n, perNode, rounds: 8, null);
        Report(asJson, "unpinned", perNode, unpinned);
        Hops tls;
        using (var certs = new BenchCertificates())
            tls = await HopsSideBySide(folder, n, perNode, rounds: 8, $"shardpipe.compute-cores = [{pinCore}]", certs.Hocon);
        Report(asJson, $"pinned to core {pinCore}, mutual TLS", perNode, tls);

        // 4. Micro-batching: m requests in flight over 2 stages, one compute thread each.
        var (sequential, concurrent) = await MicroBatching(folder, m, Math.Max(4, n / 2), log);
        double speedup = sequential / concurrent, ideal = 2.0 * m / (m + 2 - 1);
        BenchSupport.Say(asJson, $"  micro-batching p=2, m={m}: {sequential:0.000} s one at a time, {concurrent:0.000} s in flight; speedup {speedup:0.00} of ideal {ideal:0.00}");

        var figures = new JsonObject
        {
            ["bench"] = "decode",
            ["plain_tokens_per_s"] = Math.Round(plain, 3),
            ["one_node_tokens_per_s"] = Math.Round(one, 3),
            ["three_node_tokens_per_s"] = Math.Round(pinned.ThreeTps, 3),
            ["one_node_same_threads_tokens_per_s"] = Math.Round(pinned.OneTps, 3),
            ["threads_per_node"] = perNode,
            ["single_node_ratio"] = Math.Round(one / plain, 4),
            ["node_boundaries_per_token"] = pinned.Boundaries,
            ["compute_cores"] = $"{pinCore}",
            ["per_hop_ms"] = Math.Round(pinned.PerHopMs, 4),
            ["per_hop_ms_from_means"] = Math.Round(pinned.PerHopFromMeansMs, 4),
            ["hop_latency_p50_ms"] = Math.Round(pinned.HopP50, 4),
            ["one_node_compute_ms_per_token"] = Math.Round(pinned.OneComputeMs, 3),
            ["three_node_compute_ms_per_token"] = Math.Round(pinned.ThreeComputeMs, 3),
            ["per_hop_ms_net_of_compute"] = Math.Round(pinned.PerHopNetMs, 4),
            ["per_hop_ms_paired"] = Math.Round(pinned.PerHopPairedMs, 4),
            ["one_node_ms_per_token"] = Math.Round(pinned.OneMs, 3),
            ["three_node_ms_per_token"] = Math.Round(pinned.ThreeMs, 3),
            ["per_hop_ms_tls"] = Math.Round(tls.PerHopMs, 4),
            ["per_hop_ms_paired_tls"] = Math.Round(tls.PerHopPairedMs, 4),
            ["hop_latency_p50_ms_tls"] = Math.Round(tls.HopP50, 4),
            ["three_node_tokens_per_s_tls"] = Math.Round(tls.ThreeTps, 3),
            ["per_hop_ms_unpinned"] = Math.Round(unpinned.PerHopMs, 4),
            ["per_hop_ms_paired_unpinned"] = Math.Round(unpinned.PerHopPairedMs, 4),
            ["hop_latency_p50_ms_unpinned"] = Math.Round(unpinned.HopP50, 4),
            ["one_node_compute_ms_per_token_unpinned"] = Math.Round(unpinned.OneComputeMs, 3),
            ["three_node_compute_ms_per_token_unpinned"] = Math.Round(unpinned.ThreeComputeMs, 3),
            ["one_node_ms_per_token_unpinned"] = Math.Round(unpinned.OneMs, 3),
            ["three_node_ms_per_token_unpinned"] = Math.Round(unpinned.ThreeMs, 3),
            // The .NET thread pool's spin before sleeping (DOTNET_ThreadPool_UnfairSemaphoreSpinLimit): a latency/idle-CPU trade-off.
            ["threadpool_spin_limit"] = Environment.GetEnvironmentVariable("DOTNET_ThreadPool_UnfairSemaphoreSpinLimit") ?? "default",
            ["microbatches"] = m,
            ["microbatch_speedup"] = Math.Round(speedup, 4),
            ["microbatch_ratio_vs_ideal"] = Math.Round(speedup / ideal, 4),
        };
        foreach (var (key, value) in speedFigures.ToList()) figures[key] = value?.DeepClone();
        BenchSupport.Finish(figures);
        return 0;
    }

    /// <summary>The profile with the decoder layers summed into one entry (and their mean per layer).</summary>
    private static Dictionary<string, double> Group(IReadOnlyDictionary<string, double> profile)
    {
        var layers = profile.Where(kv => kv.Key.StartsWith("layer ", StringComparison.Ordinal) && kv.Key != "layer inputs").ToList();
        var grouped = profile.Where(kv => !layers.Contains(kv)).ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 4));
        grouped["layers"] = Math.Round(layers.Sum(kv => kv.Value), 4);
        grouped["per layer"] = Math.Round(layers.Count == 0 ? 0 : layers.Average(kv => kv.Value), 4);
        return grouped;
    }

    private static JsonObject Json(Dictionary<string, double> values) => new(values.Select(kv => new KeyValuePair<string, JsonNode?>(kv.Key, kv.Value)));

    private static Generate Request(int n) => new(Guid.NewGuid().ToString("N"), Prompt, null, n, true, new SamplingSettings(true, 0, 0, 1, 0));

    /// <summary>Best decode tokens/s of three generations on an embedded cluster.</summary>
    /// <summary>Best decode tokens/s of the plain loop and of a 1-node cluster, run in turns with the same threads.</summary>
    private static async Task<(double Plain, double OneNode)> PlainBesideOneNode(string folder, int n, int threads)
    {
        await using var cluster = await EmbeddedCluster.StartAsync(1, computeThreads: threads);
        var loaded = await Load(cluster, folder);
        var local = PreTrainedModel.FromPretrained(folder);
        try
        {
            double plain = 0, one = 0;
            for (int r = 0; r < 4; r++)
            {
                plain = Math.Max(plain, TokenGenerator.Greedy(local, Prompt, null, new GenerationOptions { MaxNewTokens = n, IgnoreEos = true }).TokensPerSecond);
                one = Math.Max(one, (await cluster.Client.RunAsync(Request(n), loaded.Stages, TimeSpan.FromSeconds(120))).TokensPerSecond);
            }
            return (plain, one);
        }
        finally
        {
            local.Release();
        }
    }

    private static Task<ModelLoaded> Load(EmbeddedCluster cluster, string folder) =>
        cluster.Client.LoadAsync(new LoadModel(Guid.NewGuid().ToString("N"), folder, null, "float32", "balanced", null, null), TimeSpan.FromMinutes(10));

    /// <summary>Node boundaries one token crosses: each hop hands its activations to the next stage's node, and the last loops the token back to the first.</summary>
    private static int Boundaries(IReadOnlyList<StageInfo> stages)
    {
        var nodes = stages.Select(s => s.Device.Split('/')[0]).ToList();
        return nodes.Count > 1 ? Enumerable.Range(0, nodes.Count).Count(i => nodes[i] != nodes[(i + 1) % nodes.Count]) : 0;
    }

    /// <summary>
    /// 1 node and 3 nodes side by side, taking turns, so that drift on this shared machine hits both alike. The time
    /// per token of each is the 20th percentile of the intervals between consecutive tokens reaching the client,
    /// pooled over all rounds: a floor that a GC pause or a neighbour's burst does not move, taken the same way for
    /// both. Also returns the best mean tokens/s of each, and the median of the hops timed directly (send → receive).
    /// </summary>
    private static async Task<Hops> HopsSideBySide(string folder, int n, int threads, int rounds, string? config, string? tls = null)
    {
        config = string.Join("\n", new[] { config, tls }.OfType<string>());
        var clientConfig = tls is null ? null : Akka.Configuration.ConfigurationFactory.ParseString(tls);
        await using var c1 = await EmbeddedCluster.StartAsync(1, computeThreads: threads, extraConfig: _ => config, clientConfig: clientConfig);
        await using var c3 = await EmbeddedCluster.StartAsync(3, computeThreads: threads, extraConfig: _ => config, clientConfig: clientConfig);
        var l1 = await Load(c1, folder);
        var l3 = await Load(c3, folder);
        async Task<double> Once(EmbeddedCluster c, ModelLoaded l, List<double>? gaps)
        {
            var stamps = new List<long>();
            var outcome = await c.Client.RunAsync(Request(n), l.Stages, TimeSpan.FromSeconds(120), _ => { lock (stamps) stamps.Add(Stopwatch.GetTimestamp()); });
            gaps?.AddRange(stamps.Zip(stamps.Skip(1), (a, b) => (b - a) * 1000.0 / Stopwatch.Frequency));
            return outcome.TokensPerSecond;
        }
        await Once(c1, l1, null); // warm-up
        await Once(c3, l3, null);
        static IEnumerable<NodeDiagnostics> Diagnostics(params EmbeddedCluster[] cs) => cs.SelectMany(c => c.Nodes).Select(n => NodeDiagnostics.For(n.System));
        foreach (var d in Diagnostics(c1, c3)) { d.HopLatency.Drain(); d.StepTimes.Drain(); } // only the measured rounds count
        var oneGaps = new List<double>();
        var threeGaps = new List<double>();
        double oneTps = 0, threeTps = 0;
        var paired = new List<double>(); // per round: median interval on 3 nodes − on 1 node, the two runs back to back
        static double Median(IEnumerable<double> xs) { var o = xs.Order().ToList(); return o.Count == 0 ? double.NaN : o[o.Count / 2]; }
        for (int r = 0; r < rounds; r++)
        {
            int o0 = oneGaps.Count, t0 = threeGaps.Count;
            oneTps = Math.Max(oneTps, await Once(c1, l1, oneGaps));
            threeTps = Math.Max(threeTps, await Once(c3, l3, threeGaps));
            paired.Add(Median(threeGaps.Skip(t0)) - Median(oneGaps.Skip(o0)));
        }
        static double P20(List<double> xs) => xs.Count == 0 ? double.NaN : xs.Order().ElementAt(xs.Count / 5);
        var hops = Diagnostics(c1, c3).SelectMany(d => d.HopLatency.Drain()).Order().ToList();
        double hopP50 = hops.Count == 0 ? double.NaN : hops[hops.Count / 2];
        // Compute per token: each node's step time (p20, like the intervals), summed over the cluster's nodes.
        double Compute(EmbeddedCluster c) => Diagnostics(c).Sum(d => P20(d.StepTimes.Drain()));
        return new Hops(P20(oneGaps), P20(threeGaps), oneTps, threeTps, Boundaries(l3.Stages), hopP50, Compute(c1), Compute(c3), Median(paired));
    }

    /// <summary>One side-by-side measurement: p20 time per token, best mean tokens/s and compute per token of each cluster.</summary>
    private sealed record Hops(double OneMs, double ThreeMs, double OneTps, double ThreeTps, int Boundaries, double HopP50, double OneComputeMs, double ThreeComputeMs, double PairedDiffMs)
    {
        /// <summary>The median over rounds of (3-node − 1-node median token interval), each pair run back to back, ÷ boundaries.</summary>
        public double PerHopPairedMs => Boundaries > 0 ? PairedDiffMs / Boundaries : 0;
        public double PerHopMs => Boundaries > 0 ? (ThreeMs - OneMs) / Boundaries : 0;
        public double PerHopFromMeansMs => Boundaries > 0 ? (1000.0 / ThreeTps - 1000.0 / OneTps) / Boundaries : 0;
        public double PerHopNetMs => Boundaries > 0 ? (ThreeMs - OneMs - (ThreeComputeMs - OneComputeMs)) / Boundaries : 0;
    }

    private static void Report(bool asJson, string how, int perNode, Hops h) =>
        BenchSupport.Say(asJson, $"  3 embedded nodes ({how}): {h.ThreeMs:0.00} ms per token (p20) vs 1 node {h.OneMs:0.00} at {perNode} thread(s) per node; " +
                                 $"{h.Boundaries} node boundaries per token; {h.PerHopMs:0.000} ms per hop ({h.ThreeTps:0.00} vs {h.OneTps:0.00} tokens/s: {h.PerHopFromMeansMs:0.000} ms from the means); " +
                                 $"a hop timed directly (send to receive): {h.HopP50:0.000} ms median; compute per token {h.ThreeComputeMs:0.00} ms on 3 nodes vs {h.OneComputeMs:0.00} on 1 " +
                                 $"({h.PerHopNetMs:0.000} ms per hop net of that difference); paired rounds: {h.PerHopPairedMs:0.000} ms per hop");

    private static async Task<(double Sequential, double Concurrent)> MicroBatching(string folder, int m, int n, ILogger log)
    {
        await using var cluster = await EmbeddedCluster.StartAsync(2, computeThreads: 1);
        var loaded = await Load(cluster, folder);
        await cluster.Client.RunAsync(Request(n), loaded.Stages, TimeSpan.FromSeconds(120)); // warm-up
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < m; i++) await cluster.Client.RunAsync(Request(n), loaded.Stages, TimeSpan.FromSeconds(120));
        double sequential = sw.Elapsed.TotalSeconds;
        sw.Restart();
        await Task.WhenAll(Enumerable.Range(0, m).Select(_ => cluster.Client.RunAsync(Request(n), loaded.Stages, TimeSpan.FromSeconds(120))));
        return (sequential, sw.Elapsed.TotalSeconds);
    }
}
