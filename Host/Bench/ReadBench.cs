using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench read</c>: our tensor read path (positional reads, in parallel, straight into huge-page
/// tensor memory) against (a) reading each file into a fresh buffer of its size, the naive loader, and (b)
/// reading through one reused 16 MiB buffer, the page-cache ceiling. Every method checksums every byte.
/// </summary>
public static class ReadBench
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Checkpoint folder (default: a generated ≥1 GiB fp32 Llama)" };
        var rounds = new Option<int>("--rounds") { Description = "Rounds per method (best is reported)", DefaultValueFactory = _ => 5 };
        var threads = new Option<int>("--threads") { Description = "Reader threads for our path", DefaultValueFactory = _ => Math.Max(1, Math.Min(Environment.ProcessorCount, 4)) };
        var json = CommonOptions.Json();
        var cmd = new Command("read", "Tensor read throughput vs a naive whole-file read and the page-cache ceiling") { model, rounds, threads, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            bool asJson = parse.GetValue(json);
            string folder = parse.GetValue(model) is { } m ? ModelLocator.Locate(m) : BenchSupport.GeneratedModel("llama-1g", SyntheticLlamaSpec.Llama1GiB, log);
            using var ckpt = Checkpoint.Open(folder);
            var files = ckpt.ShardFiles.Select(s => CheckpointFiles.Resolve(folder, s)).ToList();
            long fileBytes = files.Sum(f => new FileInfo(f).Length);
            long tensorBytes = ckpt.TotalBytes;
            int n = Math.Max(1, parse.GetValue(rounds));
            int t = Math.Max(1, parse.GetValue(threads));

            BenchSupport.Say(asJson, $"bench read: {files.Count} files, {ByteSize.Format(fileBytes)}, {ckpt.Tensors.Count} tensors, {n} rounds, {t} threads");
            Ceiling(files); // warm the page cache: every method then reads from memory
            double a = double.MaxValue, b = double.MaxValue, o = double.MaxValue;
            for (int r = 0; r < n; r++)
            {
                // Interleaved so that noise on this shared machine hits every method alike.
                a = Math.Min(a, BenchSupport.ReadFilesIntoFreshBuffers(files, checksum: true));
                b = Math.Min(b, Ceiling(files));
                o = Math.Min(o, Ours(ckpt, t));
            }
            double ours = BenchSupport.Gbps(tensorBytes, o), baseline = BenchSupport.Gbps(fileBytes, a), ceiling = BenchSupport.Gbps(fileBytes, b);
            BenchSupport.Say(asJson, $"  ours (pread → huge-page tensor memory, {t} threads): {ours:0.00} GB/s");
            BenchSupport.Say(asJson, $"  (a) whole file into a fresh buffer:                {baseline:0.00} GB/s");
            BenchSupport.Say(asJson, $"  (b) reused 16 MiB buffer (page-cache ceiling):     {ceiling:0.00} GB/s");
            BenchSupport.Finish(new JsonObject
            {
                ["bench"] = "read",
                ["bytes"] = tensorBytes,
                ["files"] = files.Count,
                ["threads"] = t,
                ["ours_gbps"] = Math.Round(ours, 3),
                ["baseline_gbps"] = Math.Round(baseline, 3),
                ["ceiling_gbps"] = Math.Round(ceiling, 3),
                ["ratio"] = Math.Round(ours / baseline, 3),
                ["ratio_to_ceiling"] = Math.Round(ours / ceiling, 3),
            });
            return 0;
        });
        return cmd;
    }

    /// <summary>(b) The page-cache ceiling: one reused 16 MiB buffer, no fresh memory at all.</summary>
    private static double Ceiling(List<string> files)
    {
        var buffer = new byte[16 << 20];
        var sw = Stopwatch.StartNew();
        ulong sum = 0;
        foreach (var f in files)
        {
            using var h = File.OpenHandle(f, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
            long off = 0;
            int got;
            while ((got = RandomAccess.Read(h, buffer, off)) > 0)
            {
                sum += BenchSupport.Checksum(buffer.AsSpan(0, got));
                off += got;
            }
        }
        GC.KeepAlive(sum);
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>Ours: every tensor into its own tensor-ready native buffer, read in chunks by several threads.</summary>
    private static double Ours(Checkpoint ckpt, int threads)
    {
        const int Chunk = 8 << 20;
        var sw = Stopwatch.StartNew();
        var buffers = new NativeBuffer[ckpt.Tensors.Count];
        var work = new List<(int Tensor, long Offset, int Length)>();
        for (int i = 0; i < ckpt.Tensors.Count; i++)
        {
            long len = ckpt.Tensors[i].Info.ByteLength;
            buffers[i] = new NativeBuffer(len);
            for (long off = 0; off < len; off += Chunk) work.Add((i, off, (int)Math.Min(Chunk, len - off)));
        }
        ulong total = 0;
        Parallel.ForEach(System.Collections.Concurrent.Partitioner.Create(0, work.Count, 1), new ParallelOptions { MaxDegreeOfParallelism = threads },
            () => 0UL,
            (range, _, acc) =>
            {
                for (int w = range.Item1; w < range.Item2; w++)
                {
                    var (ti, off, len) = work[w];
                    var loc = ckpt.Tensors[ti];
                    var dst = buffers[ti].Slice(off, len);
                    ckpt.Shard(loc.Shard).ReadRange(loc.Info, off, dst);
                    acc += BenchSupport.Checksum(dst);
                }
                return acc;
            },
            acc => Interlocked.Add(ref total, acc));
        double s = sw.Elapsed.TotalSeconds;
        foreach (var b in buffers) b.Dispose();
        GC.KeepAlive(total);
        return s;
    }
}
