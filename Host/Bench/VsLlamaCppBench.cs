using System.CommandLine;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Bench.Gguf;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench vs-llamacpp</c>: ShardPipe beside llama.cpp on the same weights and threads. The checkpoint is
/// written as GGUF (F32, F16; Q8_0 and Q4_0 with --quantized); llama.cpp runs through node-llama-cpp 3.21.1
/// (<c>ops/llamacpp/run.mjs</c>). Decode tokens/s (new tokens after the first over the time after it, best of rounds)
/// and 512-token prefill tokens/s: ShardPipe float32 against F32, bfloat16 against F16. First, as a check that both
/// run the same model, llama.cpp's greedy tokens from the F32 file must equal ShardPipe's float32 ones. With --quantized,
/// ShardPipe quantizes the same float32 checkpoint on load (<c>--quantize int8|int4 --quantize-group-size 32</c>, every
/// Linear and the untied head, as the GGUF files quantize every matrix; activations, norms and embeddings in float32,
/// as llama.cpp's) against Q8_0 and Q4_0, counted and interleaved as the float rows.
/// </summary>
public static class VsLlamaCppBench
{
    /// <summary>Group size of ShardPipe's int8/int4 side under --quantized: 32, as Q8_0's and Q4_0's blocks.</summary>
    public const int QuantizedGroupSize = 32;

    private static readonly long[] DecodePrompt = { 1, 306, 4658, 278, 6593, 310, 2834, 338 };

    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Llama checkpoint folder with tokenizer.json (default: --preset)" };
        var preset = new Option<string>("--preset") { Description = "Generated model when no --model: llama-125m (default) or tiny", DefaultValueFactory = _ => "llama-125m" };
        var threads = new Option<int>("--threads") { Description = "Threads for both (llama.cpp's threads; ShardPipe's libtorch threads)", DefaultValueFactory = _ => 2 };
        var tokens = new Option<int>("--tokens") { Description = "New tokens per decode measurement", DefaultValueFactory = _ => 64 };
        var prefill = new Option<int>("--prefill") { Description = "Prompt tokens of the prefill measurement", DefaultValueFactory = _ => 512 };
        var rounds = new Option<int>("--rounds") { Description = "Timed rounds of each measurement (best reported, after one warm-up)", DefaultValueFactory = _ => 3 };
        var quantized = new Option<bool>("--quantized") { Description = "Also Q8_0 and Q4_0 (llama.cpp) against ShardPipe int8/int4 group 32 quantized on load from the same float32 weights" };
        var npm = new Option<string?>("--npm-dir") { Description = "Cache folder for node-llama-cpp (default: shardpipe-llamacpp-npm under the temp folder)" };
        var json = CommonOptions.Json();
        var cmd = new Command("vs-llamacpp", "ShardPipe beside llama.cpp (node-llama-cpp 3.21.1) on the same weights: decode and 512-token prefill, fp32 vs F32 and bf16 vs F16")
            { model, preset, threads, tokens, prefill, rounds, quantized, npm, json };
        CommandAction.Set(cmd, (parse, log) => Run(parse.GetValue(model), parse.GetValue(preset)!, parse.GetValue(threads), parse.GetValue(tokens), parse.GetValue(prefill),
            parse.GetValue(rounds), parse.GetValue(quantized), parse.GetValue(npm), parse.GetValue(json), log));
        return cmd;
    }

    private static int Run(string? modelArg, string preset, int threads, int n, int prefill, int rounds, bool quantized, string? npmDir, bool asJson, ILogger log)
    {
        if (threads < 1 || n < 2 || prefill < 1 || rounds < 1) throw new InvalidInputException("--threads, --prefill and --rounds must be ≥ 1 and --tokens ≥ 2");
        string folder = modelArg is { } given ? ModelLocator.Locate(given) : Generated(preset, log);
        var llama = LlamaCppRunner.Prepare(npmDir);
        TorchSharp.torch.set_num_threads(threads);
        BenchSupport.Say(asJson, $"bench vs-llamacpp: {folder}, {threads} thread(s), decode {n} new tokens, prefill {prefill} tokens, best of {rounds}");

        var types = new List<GgmlType> { GgmlType.F32, GgmlType.F16 };
        if (quantized) types.AddRange(new[] { GgmlType.Q8_0, GgmlType.Q4_0 });
        var files = types.ToDictionary(t => t, t => Gguf(folder, t, log));

        // The check: llama.cpp's greedy continuation from the F32 file equals ShardPipe's float32 one.
        var figures = new JsonObject { ["bench"] = "vs-llamacpp", ["threads"] = threads, ["decode_new_tokens"] = n, ["prefill_tokens"] = prefill, ["rounds"] = rounds };
        var fp32 = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { DType = "float32" });
        var bf16 = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { DType = "bfloat16" });
        // --quantized: the same float32 source quantized on load, group 32, head included (ggml's Q8_0/Q4_0 blocks are 32 inputs).
        var quants = quantized
            ? new[] { ("int8", GgmlType.Q8_0), ("int4", GgmlType.Q4_0) }.Select(q => (Mode: q.Item1, Type: q.Item2, Model: PreTrainedModel.FromPretrained(folder,
                new FromPretrainedOptions { DType = "float32", Quantize = q.Item1, QuantizeGroupSize = QuantizedGroupSize, QuantizeHead = true }))).ToList()
            : new();
        JsonObject Theirs(GgmlType t, int r) => llama.Invoke(TimeSpan.FromMinutes(10), "--model", files[t], "--threads", $"{threads}",
            "--decode", $"{n}", "--prefill", $"{prefill}", "--rounds", $"{r}");
        static double Tps(JsonObject o, string key) => o[key]!.GetValue<double>();
        var best = new Dictionary<string, double>();
        void Keep(string key, double v) => best[key] = Math.Max(best.GetValueOrDefault(key), v);
        try
        {
            int vocab = fp32.Config.GetInt("vocab_size");
            var prompt = DecodePrompt.Select(t => t % vocab).ToArray();
            long[] ours = GreedyIds(fp32, prompt, 16);
            var theirs = llama.Invoke(TimeSpan.FromMinutes(5), "--model", files[GgmlType.F32], "--threads", $"{threads}", "--f32-cache",
                "--greedy", string.Join(',', prompt), "--new", "16")["greedy_tokens"]!.AsArray().Select(t => t!.GetValue<long>()).ToArray();
            bool match = ours.SequenceEqual(theirs);
            BenchSupport.Say(asJson, $"  greedy check (F32 file, 16 tokens): {(match ? "equal" : "DIFFERENT")}: ShardPipe [{string.Join(' ', ours)}], llama.cpp [{string.Join(' ', theirs)}]");
            figures["greedy_tokens_equal_f32"] = match;

            // Rounds in turns (ShardPipe fp32, llama.cpp F32, ShardPipe bf16, llama.cpp F16), so that drift on a shared
            // machine hits both alike; each side's best round is reported. Each llama.cpp call warms up once, then times one round.
            Speed(fp32, n, prefill);
            Speed(bf16, n, prefill);
            foreach (var q in quants) Speed(q.Model, n, prefill);
            for (int r = 0; r < rounds; r++)
            {
                var (d, p) = Speed(fp32, n, prefill);
                Keep("ours_fp32_decode", d); Keep("ours_fp32_prefill", p);
                double fp32Round = d;
                var f32 = Theirs(GgmlType.F32, 1);
                Keep("theirs_f32_decode", Tps(f32, "decode_tokens_per_s")); Keep("theirs_f32_prefill", Tps(f32, "prefill_tokens_per_s"));
                figures["llama_cpp_release"] = f32["llama_cpp_release"]?.DeepClone();
                (d, p) = Speed(bf16, n, prefill);
                Keep("ours_bf16_decode", d); Keep("ours_bf16_prefill", p);
                var f16 = Theirs(GgmlType.F16, 1);
                Keep("theirs_f16_decode", Tps(f16, "decode_tokens_per_s")); Keep("theirs_f16_prefill", Tps(f16, "prefill_tokens_per_s"));
                BenchSupport.Say(asJson, $"  round {r + 1}: decode fp32/F32 {fp32Round:0.0}/{Tps(f32, "decode_tokens_per_s"):0.0}, bf16/F16 {d:0.0}/{Tps(f16, "decode_tokens_per_s"):0.0} tok/s (ShardPipe/llama.cpp)");
                foreach (var q in quants)
                {
                    string t = Ggml(q.Type);
                    (d, p) = Speed(q.Model, n, prefill);
                    Keep($"ours_{q.Mode}_decode", d); Keep($"ours_{q.Mode}_prefill", p);
                    var theirsQ = Theirs(q.Type, 1);
                    Keep($"theirs_{t}_decode", Tps(theirsQ, "decode_tokens_per_s")); Keep($"theirs_{t}_prefill", Tps(theirsQ, "prefill_tokens_per_s"));
                    BenchSupport.Say(asJson, $"  round {r + 1}: decode {q.Mode}/{q.Type} {d:0.0}/{Tps(theirsQ, "decode_tokens_per_s"):0.0}, prefill {p:0.0}/{Tps(theirsQ, "prefill_tokens_per_s"):0.0} tok/s (ShardPipe/llama.cpp)");
                }
            }
        }
        finally
        {
            fp32.Release();
            bf16.Release();
            foreach (var q in quants) q.Model.Release();
        }
        void Pair(string key, double ours, double theirs, string oursName, string theirsName)
        {
            figures[$"{key}_shardpipe_tokens_per_s"] = Math.Round(ours, 3);
            figures[$"{key}_llamacpp_tokens_per_s"] = Math.Round(theirs, 3);
            figures[$"{key}_ratio"] = Math.Round(ours / theirs, 4);
            BenchSupport.Say(asJson, $"  {key,-28} ShardPipe {oursName} {ours,9:0.00} tok/s   llama.cpp {theirsName} {theirs,9:0.00} tok/s   ratio {ours / theirs:0.000}");
        }
        Pair("decode_fp32", best["ours_fp32_decode"], best["theirs_f32_decode"], "fp32", "F32");
        Pair("decode_bf16_vs_f16", best["ours_bf16_decode"], best["theirs_f16_decode"], "bf16", "F16");
        Pair($"prefill{prefill}_fp32", best["ours_fp32_prefill"], best["theirs_f32_prefill"], "fp32", "F32");
        Pair($"prefill{prefill}_bf16_vs_f16", best["ours_bf16_prefill"], best["theirs_f16_prefill"], "bf16", "F16");

        foreach (var q in quants)
        {
            string t = Ggml(q.Type);
            Pair($"decode_{q.Mode}_vs_{t}", best[$"ours_{q.Mode}_decode"], best[$"theirs_{t}_decode"], $"{q.Mode} g{QuantizedGroupSize}", q.Type.ToString());
            Pair($"prefill{prefill}_{q.Mode}_vs_{t}", best[$"ours_{q.Mode}_prefill"], best[$"theirs_{t}_prefill"], $"{q.Mode} g{QuantizedGroupSize}", q.Type.ToString());
        }
        if (quantized) figures["quantize_group_size"] = QuantizedGroupSize;
        BenchSupport.Finish(figures);
        return 0;
    }

    private static string Ggml(GgmlType t) => t.ToString().ToLowerInvariant();

    /// <summary>One round: decode tokens/s (new tokens after the first over the time after it) and prefill tokens/s of a <paramref name="prefill"/>-token prompt.</summary>
    private static (double Decode, double Prefill) Speed(CausalLMModel model, int n, int prefill)
    {
        int vocab = model.Config.GetInt("vocab_size");
        var decodePrompt = new[] { DecodePrompt.Select(t => t % vocab).ToArray() };
        var prefillPrompt = new[] { Enumerable.Range(0, prefill).Select(i => (long)((i * 7919L + 13) % vocab)).ToArray() };
        double d = TokenGenerator.Greedy(model, decodePrompt, null, new GenerationOptions { MaxNewTokens = n, IgnoreEos = true }).TokensPerSecond;
        double p = TokenGenerator.Greedy(model, prefillPrompt, null, new GenerationOptions { MaxNewTokens = 1, IgnoreEos = true }).PrefillSeconds;
        return (d, prefill / p);
    }

    private static long[] GreedyIds(CausalLMModel model, long[] prompt, int n) =>
        TokenGenerator.Greedy(model, new[] { prompt }, null, new GenerationOptions { MaxNewTokens = n, IgnoreEos = true }).Sequences[0].Skip(prompt.Length).ToArray();

    private static string Generated(string preset, ILogger log)
    {
        var spec = preset switch
        {
            "llama-125m" => SyntheticLlamaSpec.Llama125M,
            "tiny" => new SyntheticLlamaSpec(),
            var other => throw new InvalidInputException($"--preset '{other}': use llama-125m or tiny"),
        };
        string folder = BenchSupport.GeneratedModel(preset, spec, log);
        if (!File.Exists(Path.Combine(folder, "tokenizer.json"))) ByteLevelTokenizerFile.Write(folder, spec.VocabSize);
        return folder;
    }

    /// <summary>The checkpoint as a GGUF file of <paramref name="type"/>, cached beside the bench models until the checkpoint changes.</summary>
    public static string Gguf(string folder, GgmlType type, ILogger log)
    {
        string dir = Path.Combine(Path.GetTempPath(), "shardpipe-bench", "gguf");
        string full = Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar);
        string stamp = string.Join('|', Directory.GetFiles(full).Order().Select(f => $"{Path.GetFileName(f)}:{new FileInfo(f).Length}:{File.GetLastWriteTimeUtc(f).Ticks}"));
        string hash = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(full)))[..12].ToLowerInvariant();
        string name = $"{Path.GetFileName(full)}-{hash}-{type.ToString().ToLowerInvariant()}.gguf";
        string path = Path.Combine(dir, name);
        string stampFile = path + ".source";
        if (File.Exists(path) && File.Exists(stampFile) && File.ReadAllText(stampFile) == full + "\n" + stamp) return path;
        log.LogInformation("writing {Type} GGUF {Path}", type, path);
        GgufWriter.Write(folder, path, type);
        File.WriteAllText(stampFile, full + "\n" + stamp);
        return path;
    }
}
