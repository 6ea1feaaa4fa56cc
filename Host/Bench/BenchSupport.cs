using System.Diagnostics;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Bench;

/// <summary>What the benchmarks share: generated models, timing, checksums and the closing JSON line.</summary>
public static class BenchSupport
{
    /// <summary>A generated checkpoint cached under the temp folder (regenerated when its spec changes).</summary>
    public static string GeneratedModel(string name, SyntheticLlamaSpec spec, ILogger log)
    {
        string folder = Path.Combine(Path.GetTempPath(), "shardpipe-bench", name);
        string stamp = Path.Combine(folder, ".spec");
        string wanted = spec.ToString();
        if (File.Exists(stamp) && File.ReadAllText(stamp) == wanted) return folder;
        if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        log.LogInformation("generating benchmark checkpoint {Name} in {Folder}", name, folder);
        var sw = Stopwatch.StartNew();
        SyntheticLlama.Write(folder, spec);
        File.WriteAllText(stamp, wanted);
        log.LogInformation("generated in {Seconds:0.0} s", sw.Elapsed.TotalSeconds);
        return folder;
    }

    /// <summary>Sums every 8-byte word: touches every byte so a lazy mapping or read cannot be skipped.</summary>
    public static ulong Checksum(ReadOnlySpan<byte> bytes)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(bytes);
        var acc = Vector<ulong>.Zero;
        var vectors = MemoryMarshal.Cast<ulong, Vector<ulong>>(words);
        foreach (var v in vectors) acc += v;
        ulong sum = Vector.Sum(acc);
        for (int i = vectors.Length * Vector<ulong>.Count; i < words.Length; i++) sum += words[i];
        for (int i = words.Length * 8; i < bytes.Length; i++) sum += bytes[i];
        return sum;
    }

    public static double Gbps(long bytes, double seconds) => bytes / seconds / 1e9;

    /// <summary>Prints the closing JSON line; in --json mode it is the only stdout line.</summary>
    public static void Finish(JsonObject figures) => JsonOut.Print(figures);

    /// <summary>Human lines go to stdout only without --json (stderr otherwise, so stdout stays one line).</summary>
    public static void Say(bool json, string line)
    {
        if (json) Console.Error.WriteLine(line);
        else Console.WriteLine(line);
    }
}
