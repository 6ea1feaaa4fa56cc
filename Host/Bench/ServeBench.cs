using System.CommandLine;
using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Workers;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;
using ShardPipe.Host.Serving;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench serve</c>: a generated Llama of about 134M parameters on <c>embedded:3</c> behind the HTTP server.
/// One streamed completion alone (single_stream_tokens_per_s, from its first token to its last), then
/// <c>--concurrency</c> streams at once (aggregate_tokens_per_s: all their tokens over the wall time), greedy with
/// eos ignored so every stream is <c>--tokens</c> long; batching_speedup = aggregate ÷ single stream;
/// single_stream_vs_generate = the single stream ÷ the same generation in one process with all the process's cores
/// (generate_tokens_per_s, generate_threads; before session 18 it ran on cores ÷ nodes threads, which the embedded
/// cluster had made libtorch's default: 1 of 2, half speed); time to first
/// token and inter-token latency over the concurrent streams, as a client sees them. The measured rounds interleave the
/// three kinds (a single stream, <c>generate</c>, the concurrent streams; <c>measured_rounds</c> of each), so that the
/// machine's load falls on every side of a ratio; each side's figure is its best round, and
/// <c>*_median_pair</c> the median of the rounds' own ratios. Each measurement follows a warm-up of
/// its own kind (streams of other prompts, one at a time, until one leaves the JIT quiet: single_warmup_rounds; then
/// concurrent rounds of other prompts until one leaves the JIT quiet: concurrent_warmup_rounds; jit_ms_during_single and
/// jit_ms_during_concurrent are the JIT's time inside the measured rounds). The stages merge the streams''
/// steps (continuous batching); rows_per_step_mean is the mean rows of the steps the nodes ran meanwhile.
/// <para>Where the time goes: <c>single_stage_step_ms</c> / <c>concurrent_stage_step_ms</c> are the stages' median step
/// times summed (the compute of one round of the pipeline, every stage in turn), <c>*_hop_ms</c> the median activation
/// hop between stages; the rest of a round (<c>single_ms_per_token</c>, or ITL) is messaging, hand-offs between threads,
/// HTTP and the client. <c>steady_aggregate_tokens_per_s</c> is the streams' rate once all decode (concurrency ÷ ITL p50:
/// without the prompts' prefill and the ramp-up that <c>aggregate_tokens_per_s</c> includes), and
/// <c>steady_batching_speedup</c> that over the single stream.</para>
/// <para>Then chunked prefill: while 8 requests decode, a 512-token prompt joins them, prefilled in chunks of 128
/// positions and then whole; prefill_stall_ms_* is the longest wait between two tokens of the decoding requests while
/// the long prompt is prefilled (their usual gap: decode_gap_ms).</para>
/// </summary>
public static class ServeBench
{
    /// <summary>Measured rounds, each of every kind (the single stream, <c>generate</c> in one process, the concurrent
    /// streams) one after another; each side's figure is its best round.</summary>
    private const int MeasuredRounds = 5;

    /// <summary>The first word of each measured concurrent round's prompts: as long as "Stream", differing within the first
    /// prefix-cache block, so no round reuses another's cached prefixes.</summary>
    private static readonly string[] RoundWords = { "Strand", "Streak", "Strobe", "Strike", "Strait" };

    public static Command Create()
    {
        var tokens = new Option<int>("--tokens") { Description = "New tokens per stream", DefaultValueFactory = _ => 48 };
        var concurrency = new Option<int>("--concurrency") { Description = "Streams at once", DefaultValueFactory = _ => 16 };
        var model = new Option<string?>("--model") { Description = "Checkpoint folder with a tokenizer (default: a generated 134M Llama)" };
        var microBatches = new Option<int>("--micro-batches") { Description = "The nodes' shardpipe.batching.micro-batches (groups of requests circulating at once)", DefaultValueFactory = _ => 1 };
        var sharedPrefix = new Option<int>("--shared-prefix") { Description = "Instead: --concurrency requests sharing a prefix of this many tokens, time to first token with the prefix cache and without (SharedPrefixBench)" };
        var computeShare = new Option<bool>("--compute-share") { Description = "The nodes' shardpipe.compute-share (false: the fixed split of cores ÷ nodes, for comparison)", DefaultValueFactory = _ => true };
        var longInputs = new Option<bool>("--fp32-long-inputs") { Description = "float32 inputs of more than 64 rows (the arriving prompts' prefill) on our kernel in passes (false: libtorch's GEMM, for comparison)", DefaultValueFactory = _ => true };
        var json = CommonOptions.Json();
        var cmd = new Command("serve", "Serving throughput: one stream vs N concurrent streams through the OpenAI HTTP server on 3 embedded nodes") { tokens, concurrency, model, microBatches, json, sharedPrefix, computeShare, longInputs };
        CommandAction.Set(cmd, (parse, log) =>
        {
            Fp32LongInputs.Enabled = parse.GetValue(longInputs); // the embedded nodes run in this process
            return parse.GetValue(sharedPrefix) is > 0 and var sp
                ? SharedPrefixBench.Run(parse.GetValue(model) ?? BenchSupport.GeneratedModel("llama-125m", SyntheticLlamaSpec.Llama125M, log), sp, parse.GetValue(concurrency), parse.GetValue(json), log)
                : Run(parse.GetValue(model), parse.GetValue(tokens), parse.GetValue(concurrency), parse.GetValue(microBatches), parse.GetValue(json), log, parse.GetValue(computeShare));
        });
        return cmd;
    }

    private static async Task<int> Run(string? modelArg, int n, int concurrency, int microBatches, bool asJson, ILogger log, bool computeShare = true)
    {
        if (n < 2 || concurrency < 1 || microBatches < 1) throw new InvalidInputException("--tokens must be at least 2, --concurrency and --micro-batches at least 1");
        string folder = modelArg ?? BenchSupport.GeneratedModel("llama-125m", SyntheticLlamaSpec.Llama125M, log);
        if (!ModelTokenizer.Exists(folder)) ByteLevelTokenizerFile.Write(folder, SyntheticLlamaSpec.Llama125M.VocabSize);
        BenchSupport.Say(asJson, $"bench serve: {folder} on embedded:3, {n} tokens per stream, greedy, eos ignored");
        int rowsCap = Math.Max(32, concurrency);
        var cluster = await EmbeddedCluster.StartAsync(3, extraConfig: _ => $"shardpipe.max-in-flight = {rowsCap}\nshardpipe.batching.max-rows = {rowsCap}\nshardpipe.batching.micro-batches = {microBatches}\nshardpipe.compute-share = {(computeShare ? "on" : "off")}");
        await using var session = ClusterSession.Over(cluster);
        await session.EnsureLoadedAsync(new ShardPipe.Messages.LoadModel(Guid.NewGuid().ToString("N"), folder, null, "float32", "balanced", null, null), log, json: true);
        await using var server = await OpenAiServer.StartAsync(new ServeSettings { ModelId = "bench", ModelFolder = folder, Port = 0, MaxActive = Math.Max(16, concurrency), RequestTimeout = TimeSpan.FromMinutes(10) }, session, log);
        using var http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromMinutes(10) };

        // One stream: the times of its text events (ms from sending) and its token count (from the usage event).
        Task<(List<double> Stamps, int Tokens)> Stream(int i) => Prompted($"Stream {i}: the quick brown fox");
        async Task<(List<double> Stamps, int Tokens)> Prompted(string prompt)
        {
            var body = new JsonObject
            {
                ["model"] = "bench", ["prompt"] = prompt, ["max_tokens"] = n, ["temperature"] = 0, ["stream"] = true,
                ["ignore_eos"] = true, ["stream_options"] = new JsonObject { ["include_usage"] = true },
            };
            var sw = Stopwatch.StartNew();
            using var response = await http.SendAsync(new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(body) }, HttpCompletionOption.ResponseHeadersRead);
            response.EnsureSuccessStatusCode();
            var stamps = new List<double>();
            int count = 0;
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            while (await reader.ReadLineAsync() is { } line)
            {
                if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
                if (line == "data: [DONE]") break;
                var e = JsonNode.Parse(line[6..])!;
                if (e["usage"] is JsonObject usage) count = usage["completion_tokens"]!.GetValue<int>();
                else if (e["choices"]![0]!["finish_reason"] is null) stamps.Add(sw.Elapsed.TotalMilliseconds); // one event per released piece
            }
            if (count != n) throw new ShardPipeException($"a stream produced {count} tokens, not {n}");
            return (stamps, count);
        }

        // Warm-ups, each of its own kind, until one leaves the JIT quiet (BenchSupport.WarmUntilJitQuiet): single streams
        // (after one stream the JIT's background tiering still took 0.2–0.5 of a core through the measured single-stream
        // rounds: a perf trace of session 18, on a machine whose two cores the stream's steps use both of), then concurrent
        // rounds (the first merged prefill of many prompts and the first steps of many rows run code no single stream ran:
        // the JIT compiled for ≈ 0.8 s of CPU time inside the measured round, a perf trace of session 13). Their prompts
        // ("Stream -1", "Stream 100" … on) share no full prefix-cache block with the measured ones.
        int singleWarm = 0;
        int singleWarmRounds = await BenchSupport.WarmUntilJitQuiet(() => Stream(-++singleWarm), maxRounds: 12);
        int warmRound = 0;
        int warmRounds = await BenchSupport.WarmUntilJitQuiet(() => Task.WhenAll(Enumerable.Range(100 * ++warmRound, concurrency).Select(Stream)));
        using var generator = new OneProcessGenerator(folder, "Stream 0: the quick brown fox", n);
        Drain(cluster);
        // Measured rounds, interleaved: each round runs the single stream (and, with compute-share, the same stream held
        // to the fixed split of cores ÷ nodes, the in-run baseline of shardpipe.compute-share), the same generation in one
        // process, and the concurrent streams, one after another. Until session 26 the single streams' rounds, then
        // `generate`'s, then the concurrent rounds ran as three phases about ten seconds apart, so a change of this
        // machine's load between phases moved a ratio by itself (single_stream_vs_generate 0.69–0.99 in five runs of one
        // quiet hour, `generate` alone 77–109 tokens/s). Each side's figure is still its best round (the same estimator on
        // both sides of a ratio); the medians of the rounds' own ratios are reported beside them. Each concurrent round's
        // prompts ("Strand 0" … on) are as long as "Stream 0" … and share no full prefix-cache block with any other round's,
        // the single stream's or the warm-ups' (which "Stream 0/1/2" did before session 22: three of the sixteen prefills
        // were partly cached); latencies and rows pool all rounds.
        int cores = CoreArbiter.Shared.Cores, fixedSplit = Math.Max(1, cores / cluster.Nodes.Count);
        var singles = new List<double>();
        var generates = new List<double>();
        var rounds = new List<(double Wall, long Total)>();
        double singleFixed = 0;
        var fixedSteps = new List<double>();
        var sharedRounds = new List<StageProfile>();
        var all = new List<(List<double> Stamps, int Tokens)>();
        var rows = new List<double>();
        var profiles = new List<StageProfile>();
        double singleJit = 0, jitDuring = 0;
        for (int r = 0; r < MeasuredRounds; r++)
        {
            double jitAt = BenchSupport.JitMs();
            var (s, count) = await Stream(r);
            singles.Add((count - 1) / ((s[^1] - s[0]) / 1000));
            sharedRounds.Add(Drain(cluster));
            if (computeShare)
            {
                CoreArbiter.Shared.Cores = fixedSplit;
                try
                {
                    var (f, fixedCount) = await Stream(r);
                    singleFixed = Math.Max(singleFixed, (fixedCount - 1) / ((f[^1] - f[0]) / 1000));
                    fixedSteps.Add(Drain(cluster).StageStepMs);
                }
                finally { CoreArbiter.Shared.Cores = cores; }
            }
            singleJit += BenchSupport.JitMs() - jitAt;
            generates.Add(generator.Round());
            jitAt = BenchSupport.JitMs();
            var clock = Stopwatch.StartNew();
            var streams = await Task.WhenAll(Enumerable.Range(0, concurrency).Select(i => Prompted($"{RoundWords[r]} {i}: the quick brown fox")));
            rounds.Add((clock.Elapsed.TotalSeconds, streams.Sum(st => (long)st.Tokens)));
            jitDuring += BenchSupport.JitMs() - jitAt;
            all.AddRange(streams);
            rows.AddRange(cluster.Nodes.SelectMany(node => NodeDiagnostics.For(node.System).StepRows.Drain()));
            profiles.Add(Drain(cluster));
        }
        double MedianOf(IEnumerable<double> xs) => xs.Order().ElementAt(xs.Count() / 2);
        double single = singles.Max(), generate = generates.Max();
        var singleProfile = new StageProfile(MedianOf(sharedRounds.Select(p => p.StageStepMs)), MedianOf(sharedRounds.Select(p => p.HopMs)));
        BenchSupport.Say(asJson, $"  one stream: {single:0.00} tokens/s (best of {MeasuredRounds}: {string.Join(", ", singles.Select(x => x.ToString("0.0")))}); {singleProfile}");
        if (computeShare)
            BenchSupport.Say(asJson, $"  one stream, steps held to {fixedSplit} thread(s) each (cores ÷ nodes, no compute-share), interleaved: {singleFixed:0.00} tokens/s; " +
                                     $"stages' median steps {MedianOf(fixedSteps):0.0} ms in all");
        var pairedVsGenerate = singles.Zip(generates, (a, b) => a / b).ToList();
        BenchSupport.Say(asJson, $"  generate in one process, same prompt: {generate:0.00} tokens/s (best of {MeasuredRounds}: {string.Join(", ", generates.Select(x => x.ToString("0.0")))}); " +
                                 $"one stream through serve is {single / generate:0.00}× that (rounds {string.Join(", ", pairedVsGenerate.Select(x => x.ToString("0.00")))})");
        var concurrentProfile = new StageProfile(MedianOf(profiles.Select(p => p.StageStepMs)), MedianOf(profiles.Select(p => p.HopMs)));
        var aggregates = rounds.Select(r => r.Total / r.Wall).ToList();
        var pairedSpeedup = aggregates.Zip(singles, (a, b) => a / b).ToList();
        var (wall, total) = rounds[aggregates.IndexOf(aggregates.Max())];
        double aggregate = total / wall;
        var ttft = all.Select(s => s.Stamps[0]).Order().ToList();
        var itl = all.SelectMany(s => s.Stamps.Zip(s.Stamps.Skip(1), (a, b) => b - a)).Order().ToList();
        double P(List<double> xs, double q) => xs.Count == 0 ? double.NaN : xs[Math.Min(xs.Count - 1, (int)(q * xs.Count))];
        BenchSupport.Say(asJson, $"  {concurrency} streams: {aggregate:0.00} tokens/s in all, best of {MeasuredRounds} rounds ({string.Join(", ", aggregates.Select(a => a.ToString("0.0")))}; " +
                                 $"the best: {total} tokens in {wall:0.00} s); speedup {aggregate / single:0.00} (each round over its own single stream: {string.Join(", ", pairedSpeedup.Select(a => a.ToString("0.00")))}); " +
                                 $"TTFT p50 {P(ttft, 0.5):0.0} ms; ITL p50 {P(itl, 0.5):0.0} ms, p99 {P(itl, 0.99):0.0} ms; {rows.Average():0.0} rows per step; {concurrentProfile}; " +
                                 $"once all decode (ITL p50): {concurrency * 1000 / P(itl, 0.5):0.00} tokens/s, {concurrency * 1000 / P(itl, 0.5) / single:0.00}× one stream; " +
                                 $"after {warmRounds} concurrent warm-up round(s), the JIT compiled for {jitDuring:0} ms meanwhile");
        var (usual, chunked) = await PrefillStall(session.Client, 128, log);
        var (_, whole) = await PrefillStall(session.Client, 0, log);
        BenchSupport.Say(asJson, $"  a 512-token prompt joining 8 decoding requests: their longest wait {chunked:0} ms prefilled in chunks of 128, {whole:0} ms whole (usual gap {usual:0} ms)");
        BenchSupport.Finish(new JsonObject
        {
            ["bench"] = "serve",
            ["tokens_per_stream"] = n,
            ["single_stream_tokens_per_s"] = Math.Round(single, 3),
            ["concurrency"] = concurrency,
            ["aggregate_tokens_per_s"] = Math.Round(aggregate, 3),
            ["batching_speedup"] = Math.Round(aggregate / single, 4),
            ["measured_rounds"] = MeasuredRounds,
            ["aggregate_tokens_per_s_rounds"] = new JsonArray(aggregates.Select(a => (JsonNode)Math.Round(a, 3)).ToArray()),
            ["batching_speedup_median_round"] = Math.Round(MedianOf(aggregates) / single, 4),
            ["batching_speedup_median_pair"] = Math.Round(MedianOf(pairedSpeedup), 4),
            ["single_stream_tokens_per_s_rounds"] = new JsonArray(singles.Select(a => (JsonNode)Math.Round(a, 3)).ToArray()),
            ["generate_tokens_per_s"] = Math.Round(generate, 3),
            ["single_stream_vs_generate"] = Math.Round(single / generate, 4),
            ["single_stream_vs_generate_median_pair"] = Math.Round(MedianOf(pairedVsGenerate), 4),
            ["generate_tokens_per_s_rounds"] = new JsonArray(generates.Select(a => (JsonNode)Math.Round(a, 3)).ToArray()),
            ["generate_threads"] = CoreArbiter.Shared.Cores,
            ["ttft_p50_ms"] = Math.Round(P(ttft, 0.5), 2),
            ["itl_p50_ms"] = Math.Round(P(itl, 0.5), 2),
            ["itl_p99_ms"] = Math.Round(P(itl, 0.99), 2),
            ["continuous_batching"] = true,
            ["rows_per_step_mean"] = Math.Round(rows.Average(), 2),
            ["micro_batches"] = microBatches,
            ["single_stage_step_ms"] = Math.Round(singleProfile.StageStepMs, 3),
            ["single_hop_ms"] = Math.Round(singleProfile.HopMs, 3),
            ["single_ms_per_token"] = Math.Round(1000 / single, 3),
            ["concurrent_stage_step_ms"] = Math.Round(concurrentProfile.StageStepMs, 3),
            ["concurrent_hop_ms"] = Math.Round(concurrentProfile.HopMs, 3),
            ["steady_aggregate_tokens_per_s"] = Math.Round(concurrency * 1000 / P(itl, 0.5), 3),
            ["steady_batching_speedup"] = Math.Round(concurrency * 1000 / P(itl, 0.5) / single, 4),
            ["prefill_chunk"] = 128,
            ["long_prompt_tokens"] = 512,
            ["decode_gap_ms"] = Math.Round(usual, 2),
            ["prefill_stall_ms_chunked"] = Math.Round(chunked, 2),
            ["prefill_stall_ms_whole"] = Math.Round(whole, 2),
            ["compute_share"] = computeShare,
            ["single_stream_fixed_split_tokens_per_s"] = computeShare ? Math.Round(singleFixed, 3) : null,
            ["single_fixed_split_stage_step_ms"] = computeShare ? Math.Round(MedianOf(fixedSteps), 3) : null,
            ["fp32_long_inputs"] = Fp32LongInputs.Enabled,
            ["single_warmup_rounds"] = singleWarmRounds,
            ["concurrent_warmup_rounds"] = warmRounds,
            ["jit_ms_during_concurrent"] = Math.Round(jitDuring, 1),
            ["jit_ms_during_single"] = Math.Round(singleJit, 1),
        });
        return 0;
    }

    /// <summary>
    /// Where a token's time goes, from the nodes' own logs since the last drain: the stages' median step times summed
    /// (compute per round of the pipeline: all stages, in order) and the median activation hop (link frame sent → read).
    /// The round's time as the client sees it, less these, is messaging, sampling's hand-off, HTTP and the client.
    /// </summary>
    private readonly record struct StageProfile(double StageStepMs, double HopMs)
    {
        public override string ToString() => $"stages' median steps {StageStepMs:0.0} ms in all, median hop {HopMs:0.00} ms";
    }

    private static StageProfile Drain(EmbeddedCluster cluster)
    {
        double Median(List<double> xs) => xs.Count == 0 ? 0 : xs.Order().ElementAt(xs.Count / 2);
        var nodes = cluster.Nodes.Select(n => NodeDiagnostics.For(n.System)).ToList();
        double steps = BenchSupport.DrainStageSteps(cluster);
        var hops = nodes.SelectMany(d => d.HopLatency.Drain()).ToList();
        foreach (var d in nodes) d.StepRows.Drain();
        return new StageProfile(steps, Median(hops));
    }

    /// <summary>
    /// The same greedy generation without serve or a cluster: the checkpoint loaded in this process as the nodes load it
    /// (float32), <see cref="TokenGenerator.Greedy"/> with the machine's cores, as <c>shardpipe generate</c> gets them (the
    /// embedded cluster set libtorch's process-wide default, which this thread inherits, to cores ÷ nodes; the decode
    /// kernels follow it). Loaded and warmed once; each <see cref="Round"/> is one generation's decode tokens/s, counted as
    /// the stream's (first token to last), so that the rounds interleave with the served ones.
    /// </summary>
    private sealed class OneProcessGenerator : IDisposable
    {
        private readonly ShardPipe.Modeling.Models.CausalLMModel _model;
        private readonly long[][] _ids;
        private readonly GenerationOptions _options;

        public OneProcessGenerator(string folder, string prompt, int n)
        {
            _ids = new[] { ModelTokenizer.Load(folder).Encode(prompt).Ids.Select(i => (long)i).ToArray() };
            _model = PreTrainedModel.FromPretrained(folder);
            _options = new GenerationOptions { MaxNewTokens = n, IgnoreEos = true };
            Round();
        }

        public double Round()
        {
            int threadsBefore = TorchSharp.torch.get_num_threads();
            TorchSharp.torch.set_num_threads(CoreArbiter.Shared.Cores);
            try { return TokenGenerator.Greedy(_model, _ids, null, _options).TokensPerSecond; }
            finally { TorchSharp.torch.set_num_threads(threadsBefore); }
        }

        public void Dispose() => _model.Release();
    }

    /// <summary>
    /// 8 requests decode; a 512-token prompt joins (prefilled <paramref name="chunk"/> positions a step, 0 = whole). Returns
    /// the decoders' median gap between tokens before it came, and their longest gap while it was prefilled.
    /// </summary>
    private static async Task<(double Usual, double Stall)> PrefillStall(ShardPipe.Actors.Client.ShardPipeClient client, int chunk, ILogger log)
    {
        var stages = (await client.StatusAsync(TimeSpan.FromSeconds(10))).Stages;
        var greedy = new ShardPipe.Messages.SamplingSettings(true, 0, 0, 1, 0);
        using var stop = new CancellationTokenSource();
        var stamps = Enumerable.Range(0, 8).Select(_ => new List<long>()).ToArray();
        var decoders = Enumerable.Range(0, 8).Select(i => client.RunAsync(
            new ShardPipe.Messages.Generate(Guid.NewGuid().ToString("N"), new[] { Enumerable.Range(0, 8).Select(j => (long)(100 + i * 8 + j)).ToArray() }, null, 1500, true, greedy),
            stages, TimeSpan.FromMinutes(2), _ => { lock (stamps[i]) stamps[i].Add(Stopwatch.GetTimestamp()); }, stop.Token)).ToList();
        while (stamps.Any(s => { lock (s) return s.Count < 12; })) await Task.Delay(20);
        long joined = Stopwatch.GetTimestamp();
        long prefilled = 0;
        var longPrompt = new[] { Enumerable.Range(0, 512).Select(j => (long)(1000 + j * 7 % 30000)).ToArray() };
        await client.RunAsync(new ShardPipe.Messages.Generate(Guid.NewGuid().ToString("N"), longPrompt, null, 1, true, greedy, PrefillChunk: chunk),
            stages, TimeSpan.FromMinutes(2), _ => prefilled = Stopwatch.GetTimestamp());
        await Task.Delay(300); // the decoders' next tokens after it
        stop.Cancel();
        foreach (var d in decoders) { try { await d; } catch (OperationCanceledException) { } }
        double Ms(long a, long b) => Stopwatch.GetElapsedTime(a, b).TotalMilliseconds;
        var gapsBefore = new List<double>();
        double stall = 0;
        foreach (var s in stamps)
        {
            lock (s)
                for (int i = 1; i < s.Count; i++)
                {
                    if (s[i] <= joined) gapsBefore.Add(Ms(s[i - 1], s[i]));
                    else if (s[i - 1] <= prefilled) stall = Math.Max(stall, Ms(s[i - 1], s[i])); // a gap that overlaps the prefill
                }
        }
        log.LogInformation("prefill chunk {Chunk}: longest decoder gap {Stall:0} ms", chunk, stall);
        return (gapsBefore.Order().ElementAt(gapsBefore.Count / 2), stall);
    }
}
