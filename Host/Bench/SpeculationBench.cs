using System.Text.Json.Nodes;
using ShardPipe.Actors.Client;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench decode --speculate</c>: ngram speculative decoding on 3 embedded nodes against plain decoding on
/// the same cluster, taking turns (best of <c>rounds</c> each). A greedy generation of the given length (the generated
/// model's random weights fall into repetitions, which prompt lookup finds); the tokens must be equal.
/// verify_pass_over_step: one speculative step (the last token plus its drafts, k + 1 positions at every stage, when
/// prompt lookup proposes k) over one plain decode step, each the decode time over the steps after the first.
/// plain_stage_step_ms / verify_stage_step_ms: the stages' own compute of each kind of step (every stage's median step
/// time summed, median of the rounds); the rest of a step is the pipeline's messaging and hand-offs.
/// ngram_speedup: tokens/s over plain. Before the cluster, in this process: verify_pass_over_step_single_process (float32),
/// and _int4 / _int8 (quantized on load, group 128, bf16 activations), each quantized one also _per_row — the path
/// quantized passes of a few rows took before the few-row kernels, timed in the same turns. With a draft model (<c>--draft-model</c>), a third run each round proposes with
/// it at the first stage: draft_acceptance and draft_speedup (tokens/s over plain), the tokens again equal to plain.
/// Then a seeded sampled request (temperature 0.8, top-p 0.95) plain and with the draft's sampled proposals (rejection
/// sampling): draft_sampled_acceptance and draft_sampled_speedup (tokens/s over the plain sampled run), the sampled
/// tokens equal from round to round (seeded).
/// </summary>
public static class SpeculationBench
{
    private static readonly long[][] Prompt = { new long[] { 1, 306, 4658, 278, 6593, 310, 2834, 338 } };

    /// <summary>
    /// One forward pass of k + 1 positions over one of 1, in this process on a cache of <paramref name="past"/> positions,
    /// taking turns (median of <paramref name="reps"/> each): what the verification costs in compute, without the pipeline,
    /// for the model loaded with <paramref name="options"/>. When <paramref name="baseline"/> is given, the k + 1 pass also
    /// with <c>baseline(true)</c> in force (restored by <c>baseline(false)</c>) in the same turns: the verification's cost
    /// before a change, in the same run (NaN without one).
    /// </summary>
    public static (double StepMs, double VerifyMs, double BaselineVerifyMs) SingleProcess(string folder, int k,
        ShardPipe.Modeling.Loading.FromPretrainedOptions options, Action<bool>? baseline, int past = 200, int reps = 15)
    {
        var model = ShardPipe.Modeling.Loading.PreTrainedModel.FromPretrained(folder, options);
        try
        {
            using var cache = new ShardPipe.Modeling.Layers.KvCache();
            var prompt = Enumerable.Range(0, past).Select(i => (long)(i * 7 % 200 + 1)).ToArray();
            using (var _ = model.Forward(TorchSharp.torch.tensor(prompt).unsqueeze(0), cache: cache)) { }
            double Time(int t)
            {
                var ids = TorchSharp.torch.tensor(Enumerable.Range(0, t).Select(i => (long)(i + 5)).ToArray()).unsqueeze(0);
                var sw = System.Diagnostics.Stopwatch.StartNew();
                using (var _ = model.Forward(ids, cache: cache)) { }
                double ms = sw.Elapsed.TotalMilliseconds;
                cache.Truncate(past);
                ids.Dispose();
                return ms;
            }
            // Warm-up: enough passes of both widths for the JIT's tiering to finish (a method is recompiled optimised
            // after 30 calls, on a background thread that on 2 cores takes one from the measured passes).
            double Before(int t)
            {
                baseline!(true);
                try { return Time(t); }
                finally { baseline(false); }
            }
            for (int w = 0; w < 40; w++) { Time(1); Time(k + 1); if (baseline is not null) Before(k + 1); }
            var one = new List<double>();
            var many = new List<double>();
            var before = new List<double>();
            for (int r = 0; r < reps; r++)
            {
                one.Add(Time(1));
                many.Add(Time(k + 1));
                if (baseline is not null) before.Add(Before(k + 1));
            }
            return (Median(one), Median(many), before.Count > 0 ? Median(before) : double.NaN);
        }
        finally { model.Release(); }
    }

    private static double Median(List<double> xs)
    {
        xs.Sort();
        return xs[xs.Count / 2];
    }

    public static async Task<JsonObject> Run(string folder, int n, int k, int rounds, bool asJson, string? draft = null)
    {
        var (stepMs, verifyMs, _) = SingleProcess(folder, k, new ShardPipe.Modeling.Loading.FromPretrainedOptions(), null);
        BenchSupport.Say(asJson, $"  one process, cache of 200: a pass of 1 position {stepMs:0.0} ms, of {k + 1} positions {verifyMs:0.0} ms: " +
                                 $"verify_pass_over_step_single_process {verifyMs / stepMs:0.000}");
        // The same in int4 and int8 (quantized on load, group 128, head included, bf16 activations: bench decode's
        // quantized models), beside the per-row path that quantized verification passes took before the few-row kernels.
        var quantized = new Dictionary<string, double>();
        foreach (var scheme in new[] { "int4", "int8" })
        {
            var (qStep, qVerify, qBefore) = SingleProcess(folder, k,
                new ShardPipe.Modeling.Loading.FromPretrainedOptions { DType = "bfloat16", Quantize = scheme, QuantizeGroupSize = 128, QuantizeHead = true },
                on => ShardPipe.Modeling.Layers.QuantKernels.ManyRowsEnabled = !on);
            quantized[$"verify_pass_over_step_single_process_{scheme}"] = Math.Round(qVerify / qStep, 4);
            quantized[$"verify_pass_over_step_single_process_{scheme}_per_row"] = Math.Round(qBefore / qStep, 4);
            quantized[$"single_process_step_ms_{scheme}"] = Math.Round(qStep, 3);
            BenchSupport.Say(asJson, $"  one process, {scheme}: a pass of 1 position {qStep:0.00} ms, of {k + 1} positions {qVerify:0.00} ms " +
                                     $"({qVerify / qStep:0.000}x; the per-row path before: {qBefore:0.00} ms, {qBefore / qStep:0.000}x)");
        }
        await using var cluster = await EmbeddedCluster.StartAsync(3);
        var loaded = await cluster.Client.LoadAsync(new LoadModel(Guid.NewGuid().ToString("N"), folder, null, "float32", "balanced", null, null), TimeSpan.FromMinutes(10));
        var spec = new SpeculationSettings("ngram", k);
        Generate Request(SpeculationSettings? s) => new(Guid.NewGuid().ToString("N"), Prompt, null, n, true, new SamplingSettings(true, 0, 0, 1, 0), Speculate: s);
        // Warm-up: a whole generation of each kind, so that the JIT's background tiering (a perf trace of session 14 had it
        // on half a core through the first rounds: 3 nodes' actors, the speculative path's code) is done before the rounds.
        await cluster.Client.RunAsync(Request(null), loaded.Stages, TimeSpan.FromSeconds(300));
        await cluster.Client.RunAsync(Request(spec), loaded.Stages, TimeSpan.FromSeconds(300));
        var draftSpec = draft is null ? null : new SpeculationSettings(ShardPipe.Modeling.Generation.Speculation.Draft, k, draft);
        if (draftSpec is not null) await cluster.Client.RunAsync(Request(draftSpec) with { MaxNewTokens = 8 }, loaded.Stages, TimeSpan.FromSeconds(300)); // loads the draft
        RequestOutcome? bestPlain = null, bestSpec = null, bestDraft = null, bestPlainSampled = null, bestDraftSampled = null;
        var sampling = new SamplingSettings(false, 0.8, 0, 0.95, 1234);
        var plainStages = new List<double>();
        var specStages = new List<double>();
        for (int r = 0; r < rounds; r++)
        {
            BenchSupport.DrainStageSteps(cluster);
            var plain = await cluster.Client.RunAsync(Request(null), loaded.Stages, TimeSpan.FromSeconds(300));
            plainStages.Add(BenchSupport.DrainStageSteps(cluster));
            var speculative = await cluster.Client.RunAsync(Request(spec), loaded.Stages, TimeSpan.FromSeconds(300));
            specStages.Add(BenchSupport.DrainStageSteps(cluster));
            if (!plain.NewTokens[0].SequenceEqual(speculative.NewTokens[0]))
                throw new InvalidOperationException("bench decode --speculate: the speculative tokens differ from the plain run's");
            if (bestPlain is null || plain.TokensPerSecond > bestPlain.TokensPerSecond) bestPlain = plain;
            if (bestSpec is null || speculative.TokensPerSecond > bestSpec.TokensPerSecond) bestSpec = speculative;
            BenchSupport.Say(asJson, $"  round {r + 1}: plain {plain.TokensPerSecond:0.00} tokens/s, ngram {speculative.TokensPerSecond:0.00} tokens/s " +
                                     $"(accepted {speculative.Accepted} of {speculative.Proposed} drafts)");
            if (draftSpec is null) continue;
            var drafted = await cluster.Client.RunAsync(Request(draftSpec), loaded.Stages, TimeSpan.FromSeconds(300));
            if (!plain.NewTokens[0].SequenceEqual(drafted.NewTokens[0]))
                throw new InvalidOperationException("bench decode --speculate --draft-model: the speculative tokens differ from the plain run's");
            if (bestDraft is null || drafted.TokensPerSecond > bestDraft.TokensPerSecond) bestDraft = drafted;
            BenchSupport.Say(asJson, $"  round {r + 1}: draft model {drafted.TokensPerSecond:0.00} tokens/s (accepted {drafted.Accepted} of {drafted.Proposed} drafts)");
            var plainSampled = await cluster.Client.RunAsync(Request(null) with { Sampling = sampling }, loaded.Stages, TimeSpan.FromSeconds(300));
            var draftSampled = await cluster.Client.RunAsync(Request(draftSpec) with { Sampling = sampling }, loaded.Stages, TimeSpan.FromSeconds(300));
            if (bestDraftSampled is not null && !bestDraftSampled.NewTokens[0].SequenceEqual(draftSampled.NewTokens[0]))
                throw new InvalidOperationException("bench decode --speculate --draft-model: the seeded sampled request gave other tokens in another round");
            if (bestPlainSampled is null || plainSampled.TokensPerSecond > bestPlainSampled.TokensPerSecond) bestPlainSampled = plainSampled;
            if (bestDraftSampled is null || draftSampled.TokensPerSecond > bestDraftSampled.TokensPerSecond) bestDraftSampled = draftSampled;
            BenchSupport.Say(asJson, $"  round {r + 1}: sampled plain {plainSampled.TokensPerSecond:0.00} tokens/s, sampled drafts {draftSampled.TokensPerSecond:0.00} tokens/s " +
                                     $"(accepted {draftSampled.Accepted} of {draftSampled.Proposed} drafts)");
        }
        int specSteps = bestSpec!.Steps - bestSpec.Accepted; // each step delivers its accepted drafts plus one token
        double plainStep = bestPlain!.DecodeSeconds / Math.Max(1, bestPlain.Steps - 1);
        double specStep = bestSpec.DecodeSeconds / Math.Max(1, specSteps - 1);
        double acceptance = bestSpec.Proposed > 0 ? (double)bestSpec.Accepted / bestSpec.Proposed : 0;
        double speedup = bestSpec.TokensPerSecond / bestPlain.TokensPerSecond;
        double positions = 1 + (double)bestSpec.Proposed / Math.Max(1, specSteps);
        BenchSupport.Say(asJson, $"  3 embedded nodes, {n} tokens, k = {k}: plain step {plainStep * 1e3:0.0} ms, speculative step {specStep * 1e3:0.0} ms " +
                                 $"({positions:0.00} positions on average): verify_pass_over_step {specStep / plainStep:0.000}");
        double plainStage = Median(plainStages), specStage = Median(specStages);
        BenchSupport.Say(asJson, $"  the stages' own compute (median step summed over the 3 stages, median of the rounds): plain {plainStage:0.00} ms, " +
                                 $"speculative {specStage:0.00} ms ({specStage / plainStage:0.000}×); the rest of a step is the pipeline's messaging and hand-offs");
        BenchSupport.Say(asJson, $"  ngram acceptance {acceptance:0.000} ({bestSpec.Accepted} of {bestSpec.Proposed}), {specSteps} steps for {bestSpec.Steps} tokens; " +
                                 $"tokens/s {bestSpec.TokensPerSecond:0.00} vs plain {bestPlain.TokensPerSecond:0.00}: ngram_speedup {speedup:0.000}");
        var figures = new JsonObject
        {
            ["single_process_step_ms"] = Math.Round(stepMs, 3),
            ["single_process_verify_ms"] = Math.Round(verifyMs, 3),
            ["verify_pass_over_step_single_process"] = Math.Round(verifyMs / stepMs, 4),
            ["speculate_nodes"] = 3,
            ["speculate_tokens"] = n,
            ["num_speculative_tokens"] = k,
            ["plain_step_ms"] = Math.Round(plainStep * 1e3, 3),
            ["verify_step_ms"] = Math.Round(specStep * 1e3, 3),
            ["verify_positions_mean"] = Math.Round(positions, 3),
            ["verify_pass_over_step"] = Math.Round(specStep / plainStep, 4),
            ["plain_stage_step_ms"] = Math.Round(plainStage, 3),
            ["verify_stage_step_ms"] = Math.Round(specStage, 3),
            ["ngram_acceptance"] = Math.Round(acceptance, 4),
            ["ngram_proposed"] = bestSpec.Proposed,
            ["ngram_accepted"] = bestSpec.Accepted,
            ["ngram_steps"] = specSteps,
            ["plain_tokens_per_s"] = Math.Round(bestPlain.TokensPerSecond, 3),
            ["ngram_tokens_per_s"] = Math.Round(bestSpec.TokensPerSecond, 3),
            ["ngram_speedup"] = Math.Round(speedup, 4),
            ["ngram_tokens_equal"] = true,
        };
        foreach (var (key, value) in quantized) figures[key] = value;
        if (bestDraft is not null)
        {
            double draftAcceptance = bestDraft.Proposed > 0 ? (double)bestDraft.Accepted / bestDraft.Proposed : 0;
            double draftSpeedup = bestDraft.TokensPerSecond / bestPlain.TokensPerSecond;
            BenchSupport.Say(asJson, $"  draft model acceptance {draftAcceptance:0.000} ({bestDraft.Accepted} of {bestDraft.Proposed}), {bestDraft.Steps - bestDraft.Accepted} steps for {bestDraft.Steps} tokens; " +
                                     $"tokens/s {bestDraft.TokensPerSecond:0.00} vs plain {bestPlain.TokensPerSecond:0.00}: draft_speedup {draftSpeedup:0.000}");
            figures["draft_model"] = draft;
            figures["draft_acceptance"] = Math.Round(draftAcceptance, 4);
            figures["draft_proposed"] = bestDraft.Proposed;
            figures["draft_accepted"] = bestDraft.Accepted;
            figures["draft_steps"] = bestDraft.Steps - bestDraft.Accepted;
            figures["draft_tokens_per_s"] = Math.Round(bestDraft.TokensPerSecond, 3);
            figures["draft_speedup"] = Math.Round(draftSpeedup, 4);
            figures["draft_tokens_equal"] = true;
            var ds = bestDraftSampled!;
            double sampledAcceptance = ds.Proposed > 0 ? (double)ds.Accepted / ds.Proposed : 0;
            double sampledSpeedup = ds.TokensPerSecond / bestPlainSampled!.TokensPerSecond;
            BenchSupport.Say(asJson, $"  sampled (t 0.8, top-p 0.95): draft acceptance {sampledAcceptance:0.000} ({ds.Accepted} of {ds.Proposed}), {ds.Steps - ds.Accepted} steps for {ds.Steps} tokens; " +
                                     $"tokens/s {ds.TokensPerSecond:0.00} vs plain sampled {bestPlainSampled.TokensPerSecond:0.00}: draft_sampled_speedup {sampledSpeedup:0.000}");
            figures["draft_sampled_acceptance"] = Math.Round(sampledAcceptance, 4);
            figures["draft_sampled_proposed"] = ds.Proposed;
            figures["draft_sampled_accepted"] = ds.Accepted;
            figures["draft_sampled_steps"] = ds.Steps - ds.Accepted;
            figures["plain_sampled_tokens_per_s"] = Math.Round(bestPlainSampled.TokensPerSecond, 3);
            figures["draft_sampled_tokens_per_s"] = Math.Round(ds.TokensPerSecond, 3);
            figures["draft_sampled_speedup"] = Math.Round(sampledSpeedup, 4);
            figures["draft_sampled_reproduces"] = rounds > 1;
        }
        return figures;
    }
}
