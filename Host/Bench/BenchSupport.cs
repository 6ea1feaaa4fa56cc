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

    /// <summary>
    /// What a naive loader does: each file into a freshly allocated buffer of its size; returns the seconds. The
    /// buffer comes from malloc (an anonymous mapping at these sizes), so every call pays for fresh pages as a
    /// loader would; a managed array would be recycled by the GC after the first call and hide that cost.
    /// </summary>
    public static unsafe double ReadFilesIntoFreshBuffers(IEnumerable<string> files, bool checksum = false)
    {
        var sw = Stopwatch.StartNew();
        ulong sum = 0;
        foreach (var f in files)
        {
            using var h = File.OpenHandle(f, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
            long len = RandomAccess.GetLength(h);
            byte* p = (byte*)NativeMemory.Alloc((nuint)len);
            try
            {
                for (long off = 0; off < len;)
                {
                    int got = RandomAccess.Read(h, new Span<byte>(p + off, (int)Math.Min(len - off, 1 << 30)), off);
                    if (got <= 0) break;
                    off += got;
                }
                if (checksum) sum += Checksum(new ReadOnlySpan<byte>(p, (int)len));
            }
            finally
            {
                NativeMemory.Free(p);
            }
        }
        GC.KeepAlive(sum);
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>Prints the closing JSON line (with <c>openmp_wait_policy</c>, which libtorch's share of the figures
    /// depends on: <see cref="ShardPipe.Modeling.Core.OpenMpWaitPolicy"/>); in --json mode it is the only stdout line.</summary>
    public static void Finish(JsonObject figures)
    {
        figures["openmp_wait_policy"] = ShardPipe.Modeling.Core.OpenMpWaitPolicy.Effective;
        JsonOut.Print(figures);
    }

    /// <summary>The stages' median step times (ms) since the last drain, summed over the nodes: the compute of one round of
    /// the pipeline, every stage in turn (drains the nodes' step-time logs).</summary>
    public static double DrainStageSteps(ShardPipe.Actors.Hosting.EmbeddedCluster cluster) =>
        cluster.Nodes.Select(node => ShardPipe.Actors.Diagnostics.NodeDiagnostics.For(node.System).StepTimes.Drain())
            .Sum(xs => xs.Count == 0 ? 0 : xs.Order().ElementAt(xs.Count / 2));

    /// <summary>Milliseconds the JIT has spent compiling in this process so far (every thread: the background tiering too).</summary>
    public static double JitMs() => System.Runtime.JitInfo.GetCompilationTime(currentThread: false).TotalMilliseconds;

    /// <summary>
    /// Runs <paramref name="round"/> as a warm-up until a round leaves the JIT almost idle (under
    /// <paramref name="quietMs"/> of compilation), at most <paramref name="maxRounds"/> times; returns the rounds run. On 2
    /// cores the JIT's background tiering takes a core from what is measured: a perf trace of session 14 had it at 381 ms
    /// of CPU inside the measured merged prefill of <c>bench serve</c> (630 ms over the 3 stages) after one warm-up round,
    /// recompiling the methods that code had run only a few times (with tiered PGO it compiled 250–1,100 ms a round for 5
    /// rounds; without, 387, 401, 103, 26 ms: the host's TieredPGO is off since).
    /// </summary>
    public static async Task<int> WarmUntilJitQuiet(Func<Task> round, int maxRounds = 5, double quietMs = 30)
    {
        for (int r = 1; ; r++)
        {
            double before = JitMs();
            await round();
            if (JitMs() - before < quietMs || r >= maxRounds) return r;
        }
    }

    /// <summary>Human lines go to stdout only without --json (stderr otherwise, so stdout stays one line).</summary>
    public static void Say(bool json, string line)
    {
        if (json) Console.Error.WriteLine(line);
        else Console.WriteLine(line);
    }
}
