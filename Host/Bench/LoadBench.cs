using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Loading;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench load</c>: <c>FromPretrained</c> of a ≥1 GiB fp32 Llama to CPU in a warm process with a warm
/// page cache, beside a plain read of the same files, with the process's peak RSS above its idle baseline.
/// </summary>
public static class LoadBench
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Checkpoint folder (default: a generated ≥1 GiB fp32 Llama)" };
        var rounds = new Option<int>("--rounds") { Description = "Measured loads (best is reported)", DefaultValueFactory = _ => 3 };
        var json = CommonOptions.Json();
        var child = new Option<string?>("--int4-child") { Description = "(internal) load this 4-bit checkpoint once in a fresh process and print its RSS before and at peak", Hidden = true };
        var cmd = new Command("load", "from_pretrained wall time and peak memory vs a plain read of the files") { model, rounds, json, child };
        CommandAction.Set(cmd, (parse, log) =>
        {
            if (parse.GetValue(child) is { } q4Folder) return FreshProcessLoad(q4Folder);
            bool asJson = parse.GetValue(json);
            string folder = parse.GetValue(model) is { } m ? ModelLocator.Locate(m) : BenchSupport.GeneratedModel("llama-1g", SyntheticLlamaSpec.Llama1GiB, log);
            long modelBytes;
            List<string> files;
            using (var ckpt = Checkpoint.Open(folder))
            {
                modelBytes = ckpt.TotalBytes;
                files = ckpt.ShardFiles.Select(s => CheckpointFiles.Resolve(folder, s)).ToList();
            }
            TorchRuntime.Initialise();
            BenchSupport.Say(asJson, $"bench load: {folder}, {ByteSize.Format(modelBytes)} in {files.Count} files");
            // Warm-up: JIT, libtorch initialisation and the page cache; then measure.
            PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions()).Release();
            double best = double.MaxValue, bestRead = double.MaxValue, worstRss = 0;
            long idle = 0;
            for (int r = 0; r < Math.Max(1, parse.GetValue(rounds)); r++)
            {
                bestRead = Math.Min(bestRead, BenchSupport.ReadFilesIntoFreshBuffers(files));
                GC.Collect();
                GC.WaitForPendingFinalizers();
                idle = ProcessMemory.ResetPeakAndReadRss();
                var sw = Stopwatch.StartNew();
                var loaded = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions());
                double s = sw.Elapsed.TotalSeconds;
                long peak = ProcessMemory.PeakRss();
                loaded.Release();
                best = Math.Min(best, s);
                worstRss = Math.Max(worstRss, (peak - idle) / (double)modelBytes);
                BenchSupport.Say(asJson, $"  round {r + 1}: load {s:0.000} s ({modelBytes / s / 1e9:0.00} GB/s), peak RSS over idle {ByteSize.Format(peak - idle)}");
            }
            BenchSupport.Say(asJson, $"  plain read of the files: {bestRead:0.000} s ({modelBytes / bestRead / 1e9:0.00} GB/s)");
            var q4 = QuantizedLoad(folder, Math.Max(1, parse.GetValue(rounds)), asJson, log);
            var (freshIdle, freshPeak) = FreshProcessPeak(folder + "-int4-g128");
            double fresh = (freshPeak - freshIdle) / (double)q4.Bytes;
            BenchSupport.Say(asJson, $"  int4 in a fresh process: peak RSS over its idle {ByteSize.Format(freshPeak - freshIdle)} for {ByteSize.Format(q4.Bytes)} of checkpoint ({fresh:0.000}x; target ≤ 1.1)");
            BenchSupport.Finish(new JsonObject
            {
                ["int4_fresh_process_peak_rss_over_model"] = Math.Round(fresh, 4),
                ["int4_model_bytes"] = q4.Bytes,
                ["int4_load_s"] = Math.Round(q4.Seconds, 4),
                ["int4_peak_rss_over_model"] = Math.Round(q4.PeakOverModel, 4),
                ["bench"] = "load",
                ["model_bytes"] = modelBytes,
                ["load_s"] = Math.Round(best, 4),
                ["load_gbps"] = Math.Round(modelBytes / best / 1e9, 3),
                ["read_s"] = Math.Round(bestRead, 4),
                ["peak_rss_over_model"] = Math.Round(worstRss, 4),
                ["idle_rss_bytes"] = idle,
                ["ratio"] = Math.Round(bestRead / best, 3),
            });
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// The same model as a 4-bit compressed-tensors checkpoint (written once by <c>save --quantize int4</c>, group 128, the
    /// head in float): best load time and the worst peak RSS over idle, against the checkpoint's bytes (packed codes and
    /// scales plus the float parts), which is what the loaded model holds.
    /// </summary>
    /// <summary>
    /// The 4-bit checkpoint loaded once in a child process (<c>--int4-child</c>): its RSS after libtorch's initialisation
    /// and its peak during the load. <see cref="QuantizedLoad"/> measures in this process after earlier loads were released,
    /// where the allocators reuse memory they kept (its ratio came out below 1: the checkpoint's bytes were not all new
    /// RSS); a fresh process shows what a load really adds, JIT and runtime working memory included (an upper bound).
    /// </summary>
    private static (long Idle, long Peak) FreshProcessPeak(string q4)
    {
        var psi = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet") psi.ArgumentList.Add(typeof(LoadBench).Assembly.Location);
        foreach (var a in new[] { "bench", "load", "--int4-child", q4 }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start the int4 load child process");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        var line = stdout.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault() ?? "";
        var parts = line.Split(' ');
        if (p.ExitCode != 0 || parts.Length != 2 || !long.TryParse(parts[0], out long idle) || !long.TryParse(parts[1], out long peak))
            throw new InvalidOperationException($"int4 load child failed (exit {p.ExitCode}): {line} {stderr.Result}");
        return (idle, peak);
    }

    private static int FreshProcessLoad(string q4)
    {
        TorchRuntime.Initialise();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long idle = ProcessMemory.ResetPeakAndReadRss();
        var loaded = PreTrainedModel.FromPretrained(q4, new FromPretrainedOptions());
        long peak = ProcessMemory.PeakRss();
        loaded.Release();
        Console.Out.WriteLine($"{idle} {peak}");
        return 0;
    }

    private static (long Bytes, double Seconds, double PeakOverModel) QuantizedLoad(string folder, int rounds, bool asJson, ILogger log)
    {
        string q4 = folder + "-int4-g128";
        if (!File.Exists(Path.Combine(q4, CheckpointNames.Config)))
        {
            log.LogInformation("writing the 4-bit benchmark checkpoint {Folder}", q4);
            var model = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { Quantize = "int4", QuantizeGroupSize = 128 });
            PreTrainedModel.SavePretrained(model, q4 + ".tmp");
            model.Release();
            Directory.Move(q4 + ".tmp", q4);
        }
        long bytes;
        using (var ckpt = Checkpoint.Open(q4)) bytes = ckpt.TotalBytes;
        PreTrainedModel.FromPretrained(q4, new FromPretrainedOptions()).Release();
        double best = double.MaxValue, worst = 0;
        for (int r = 0; r < rounds; r++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            long idle = ProcessMemory.ResetPeakAndReadRss();
            var sw = Stopwatch.StartNew();
            var loaded = PreTrainedModel.FromPretrained(q4, new FromPretrainedOptions());
            double s = sw.Elapsed.TotalSeconds;
            long peak = ProcessMemory.PeakRss();
            loaded.Release();
            best = Math.Min(best, s);
            worst = Math.Max(worst, (peak - idle) / (double)bytes);
            BenchSupport.Say(asJson, $"  int4 round {r + 1}: load {s:0.000} s, peak RSS over idle {ByteSize.Format(peak - idle)} for {ByteSize.Format(bytes)} of checkpoint");
        }
        return (bytes, best, worst);
    }
}

/// <summary>A process's resident memory from /proc (Linux): this one, or another by pid.</summary>
public static class ProcessMemory
{
    public static long Rss(string pid = "self") => Read(pid, "VmRSS:");
    public static long PeakRss(string pid = "self") => Read(pid, "VmHWM:");

    /// <summary>Resets the kernel's peak-RSS mark (write 5 to clear_refs) and returns the current RSS.</summary>
    public static long ResetPeakAndReadRss(string pid = "self")
    {
        try { File.WriteAllText($"/proc/{pid}/clear_refs", "5"); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
        return Rss(pid);
    }

    private static long Read(string pid, string field)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            if (line.StartsWith(field, StringComparison.Ordinal))
                return long.Parse(line[field.Length..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        return 0;
    }
}
