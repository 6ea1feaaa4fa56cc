using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench offload</c>: a generated ~134M Llama with the later half of its decoder blocks on disk, decoded
/// greedily, beside the same model in memory. Each run is a child process of its own, so that its peak RSS
/// (<c>VmHWM</c>) is its own: in memory; offloaded with prefetch; offloaded without; each offloaded one with a warm
/// page cache and with the offloaded shards dropped from it first (<c>posix_fadvise(DONTNEED)</c>, no root needed).
/// <para><c>peak_rss_over_budget</c> = (peak RSS − RSS before loading) ÷ budget, where budget = the weights kept in
/// memory + two offloaded blocks (the one running and the one being read) + the runtime's working memory, measured
/// in the same run as what the in-memory process holds beyond its weights (activations, KV cache, libtorch's
/// allocator, the .NET heap). Offloaded weights are read with pread into reused tensors, never mapped, so the page
/// cache does not count towards RSS.</para>
/// <para>With <c>--quantize int4|int8</c> every run quantizes on load (group 128): the in-memory baseline is the packed
/// model, and the offloaded blocks are kept on disk packed (<c>PackedOffload</c>, in a temporary offload folder), so
/// the ratio is quantized offload over quantized in memory.</para>
/// </summary>
public static class OffloadBench
{

    public static Command Create()
    {
        var tokens = new Option<int>("--tokens") { Description = "New tokens per generation", DefaultValueFactory = _ => 32 };
        var child = new Option<string?>("--child") { Description = "(internal) run one measurement: memory, offload, offload-noprefetch", Hidden = true };
        var cold = new Option<bool>("--cold") { Description = "(internal) drop the offloaded shards from the page cache first", Hidden = true };
        var model = new Option<string?>("--model") { Description = "(internal) checkpoint folder", Hidden = true };
        var quantize = new Option<string?>("--quantize") { Description = "Quantize on load (int4 or int8, group 128) in every run: packed blocks kept on disk packed" };
        var json = CommonOptions.Json();
        var cmd = new Command("offload", "Decode with half the decoder blocks on disk vs in memory: tokens/s, prefetch speedup, peak RSS over budget") { tokens, child, cold, model, quantize, json };
        CommandAction.Set(cmd, async (parse, log) =>
        {
            string? q = parse.GetValue(quantize);
            if (q is not null) ShardPipe.Modeling.Quantization.RoundToNearest.Check(q, QuantizeGroupSize);
            return parse.GetValue(child) is { } mode
                ? Child(parse.GetValue(model)!, mode, parse.GetValue(cold), parse.GetValue(tokens), q)
                : await Run(parse.GetValue(tokens), parse.GetValue(json), log, q);
        });
        return cmd;
    }

    private sealed record Measure(double TokensPerS, long IdleRss, long PeakRss, long ResidentWeights, long OffloadedBytes, long LargestOffloadedBlock)
    {
        /// <summary>What a process holds beyond its weights (meaningful for the in-memory run).</summary>
        public long Working => PeakRss - IdleRss - ResidentWeights;
        public long Budget(long working) => ResidentWeights + (OffloadedBytes > 0 ? 2 * LargestOffloadedBlock : 0) + working;
        public double OverBudget(long working) => (double)(PeakRss - IdleRss) / Budget(working);
    }

    private const int QuantizeGroupSize = 128;

    private static async Task<int> Run(int n, bool asJson, ILogger log, string? quantize)
    {
        string folder = BenchSupport.GeneratedModel("llama-125m", SyntheticLlamaSpec.Llama125M, log);
        BenchSupport.Say(asJson, $"bench offload: {folder}, blocks 6–11 of 12 on disk, {n} new tokens, greedy" +
                                 (quantize is null ? "" : $", quantized on load {quantize} group {QuantizeGroupSize} (in memory and on disk)"));
        var memory = await Spawn(folder, "memory", false, n, quantize);
        var warmPrefetch = await Spawn(folder, "offload", false, n, quantize);
        var warmNoPrefetch = await Spawn(folder, "offload-noprefetch", false, n, quantize);
        var coldPrefetch = await Spawn(folder, "offload", true, n, quantize);
        var coldNoPrefetch = await Spawn(folder, "offload-noprefetch", true, n, quantize);
        long working = memory.Working;
        // The figures of record are the default's: prefetch only where a core is free beyond the compute threads.
        TorchRuntime.Initialise();
        bool prefetchDefault = DiskOffload.PrefetchByDefault;
        var warm = prefetchDefault ? warmPrefetch : warmNoPrefetch;
        var cold = prefetchDefault ? coldPrefetch : coldNoPrefetch;
        BenchSupport.Say(asJson, $"  prefetch by default on this machine: {(prefetchDefault ? "on" : "off")} ({Environment.ProcessorCount} cores, {TorchSharp.torch.get_num_threads()} compute threads)");
        foreach (var (name, m) in new[] { ("in memory", memory), ("offloaded, warm, prefetch", warmPrefetch), ("offloaded, warm, no prefetch", warmNoPrefetch), ("offloaded, cold, prefetch", coldPrefetch), ("offloaded, cold, no prefetch", coldNoPrefetch) })
            BenchSupport.Say(asJson, $"  {name,-30} {m.TokensPerS,7:0.00} tokens/s, peak RSS {(m.PeakRss - m.IdleRss) / 1e6:0} MB above idle, {m.OverBudget(working):0.000} of its budget " +
                                     $"({m.Budget(working) / 1e6:0} MB: {m.ResidentWeights / 1e6:0} MB resident weights, 2 × {m.LargestOffloadedBlock / 1e6:0} MB blocks, {working / 1e6:0} MB working)");
        BenchSupport.Finish(new JsonObject
        {
            ["bench"] = "offload",
            ["quantize"] = quantize ?? "none",
            ["in_memory_tokens_per_s"] = Math.Round(memory.TokensPerS, 3),
            ["offload_tokens_per_s"] = Math.Round(warm.TokensPerS, 3),
            ["offload_ratio"] = Math.Round(warm.TokensPerS / memory.TokensPerS, 4),
            ["prefetch_default"] = prefetchDefault ? "on" : "off",
            ["prefetch_speedup"] = Math.Round(warmPrefetch.TokensPerS / warmNoPrefetch.TokensPerS, 4),
            ["prefetch_speedup_cold"] = Math.Round(coldPrefetch.TokensPerS / coldNoPrefetch.TokensPerS, 4),
            ["offload_tokens_per_s_cold"] = Math.Round(cold.TokensPerS, 3),
            ["peak_rss_over_budget"] = Math.Round(warm.OverBudget(working), 4),
            ["peak_rss_over_budget_cold"] = Math.Round(cold.OverBudget(working), 4),
            ["peak_rss_over_budget_prefetch"] = Math.Round(warmPrefetch.OverBudget(working), 4),
            ["peak_rss_over_budget_no_prefetch"] = Math.Round(warmNoPrefetch.OverBudget(working), 4),
            ["offload_ratio_prefetch"] = Math.Round(warmPrefetch.TokensPerS / memory.TokensPerS, 4),
            ["offload_ratio_no_prefetch"] = Math.Round(warmNoPrefetch.TokensPerS / memory.TokensPerS, 4),
            ["budget_bytes"] = warm.Budget(working),
            ["working_bytes"] = working,
            ["offloaded_bytes"] = warm.OffloadedBytes,
        });
        return 0;
    }

    /// <summary>Runs one measurement in a child process and reads its JSON line.</summary>
    private static async Task<Measure> Spawn(string folder, string mode, bool cold, int n, string? quantize)
    {
        var psi = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet") psi.ArgumentList.Add(typeof(OffloadBench).Assembly.Location);
        foreach (var a in new[] { "bench", "offload", "--child", mode, "--model", folder, "--tokens", n.ToString(System.Globalization.CultureInfo.InvariantCulture) }) psi.ArgumentList.Add(a);
        if (cold) psi.ArgumentList.Add("--cold");
        if (quantize is not null)
        {
            psi.ArgumentList.Add("--quantize");
            psi.ArgumentList.Add(quantize);
        }
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        if (p.ExitCode != 0) throw new ShardPipeException($"bench offload child '{mode}' failed: {(await stderr).Trim()}");
        var j = JsonNode.Parse((await stdout).Trim().Split('\n')[^1])!;
        return new Measure(j["tps"]!.GetValue<double>(), j["idle"]!.GetValue<long>(), j["peak"]!.GetValue<long>(), j["resident"]!.GetValue<long>(),
            j["offloaded"]!.GetValue<long>(), j["block"]!.GetValue<long>());
    }

    private static int Child(string folder, string mode, bool cold, int n, string? quantize)
    {
        TorchRuntime.Initialise();
        long idle = Status("VmRSS");
        var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(folder));
        var map = new Dictionary<string, string> { [meta.InputEmbeddingsPath] = "cpu", [meta.FinalNormPath] = "cpu", [meta.OutputEmbeddingsPath] = "cpu" };
        for (int i = 0; i < meta.NumLayers; i++) map[meta.LayerPath(i)] = mode != "memory" && i >= meta.NumLayers / 2 ? "disk" : "cpu";
        using var offloadFolder = quantize is null ? null : new TemporaryFolder();
        var model = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions
        {
            DeviceMapDict = map, OffloadPrefetch = mode != "offload-noprefetch",
            Quantize = quantize, QuantizeGroupSize = QuantizeGroupSize, OffloadFolder = offloadFolder?.Path,
        });
        long resident = model.NamedParameters().Where(p => p.Slot.IsMaterialised).Sum(p => p.Slot.Tensor.NumberOfElements * p.Slot.Tensor.ElementSize);
        long block = quantize is null
            ? meta.NamedParameters().Where(p => ShardPipe.Placement.ModulePath.Covers(meta.LayerPath(meta.NumLayers - 1), p.Key)).Sum(p => p.Slot.ElementCount * 4)
            : (long)ShardPipe.Placement.ModuleSizes.Compute(ShardPipe.Modeling.Quantization.RoundToNearest.PlanTree(meta, quantize, QuantizeGroupSize, false),
                DType.F32, memoryBytes: true)[meta.LayerPath(meta.NumLayers - 1)];
        long[][] prompt = { new long[] { 1, 306, 4658, 278, 6593, 310, 2834, 338 } };
        double Tps() => TokenGenerator.Greedy(model, prompt, null, new GenerationOptions { MaxNewTokens = n, IgnoreEos = true }).TokensPerSecond;
        double best = 0;
        for (int r = 0; r < 3; r++)
        {
            if (cold) DropFromPageCache(folder);
            if (cold && offloadFolder is not null) foreach (var packed in Directory.GetDirectories(offloadFolder.Path)) DropFromPageCache(packed);
            best = Math.Max(best, Tps());
        }
        Console.WriteLine(new JsonObject
        {
            ["tps"] = best, ["idle"] = idle, ["peak"] = Status("VmHWM"), ["resident"] = resident, ["offloaded"] = model.Offload?.Bytes ?? 0, ["block"] = block,
        }.ToJsonString());
        return 0;
    }

    /// <summary>A field of /proc/self/status in bytes (VmRSS, VmHWM).</summary>
    private static long Status(string field)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line[(field.Length + 1)..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        return 0;
    }

    /// <summary>A folder under the temporary directory, removed on dispose (where a quantized run's packed blocks are written).</summary>
    private sealed class TemporaryFolder : IDisposable
    {
        public string Path { get; } = Directory.CreateDirectory(System.IO.Path.Combine(System.IO.Path.GetTempPath(), "shardpipe-offload-" + Guid.NewGuid().ToString("N")[..12])).FullName;

        public void Dispose()
        {
            try { Directory.Delete(Path, recursive: true); }
            catch (IOException) { }
        }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int posix_fadvise(int fd, long offset, long len, int advice);

    /// <summary>Asks the kernel to drop the checkpoint's pages from its cache (POSIX_FADV_DONTNEED = 4).</summary>
    private static void DropFromPageCache(string folder)
    {
        foreach (var file in Directory.GetFiles(folder, "*.safetensors"))
        {
            using var handle = File.OpenHandle(file);
            posix_fadvise((int)handle.DangerousGetHandle(), 0, 0, 4);
        }
    }
}
