using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Layers;

namespace ShardPipe.Host.Bench;

/// <summary>
/// The machine's read bandwidth, as decode sees it (<c>shardpipe bench bandwidth</c>, and the baseline of
/// <c>bench decode</c>'s weight_read_ratio): a STREAM-like sum of a buffer several times the last-level cache (2 GiB by
/// default), split in contiguous parts over the decode kernels' threads (<see cref="SpinPool.Shared"/>, the caller and
/// its helpers), repeated, reported as the median with its range; and a memcpy of half the buffer into the other half
/// on the same threads, for comparison (GB/s of bytes read).
/// </summary>
public static class ReadBandwidth
{
    public sealed record Result(long Bytes, long LastLevelCacheBytes, int Threads, int Repeats,
        double SumMedianGBps, double SumMinGBps, double SumMaxGBps, double CopyMedianGBps, double CopyMinGBps, double CopyMaxGBps)
    {
        public JsonObject ToJson() => new()
        {
            ["buffer_bytes"] = Bytes,
            ["last_level_cache_bytes"] = LastLevelCacheBytes,
            ["threads"] = Threads,
            ["repeats"] = Repeats,
            ["sum_read_gb_s"] = Math.Round(SumMedianGBps, 3),
            ["sum_read_gb_s_min"] = Math.Round(SumMinGBps, 3),
            ["sum_read_gb_s_max"] = Math.Round(SumMaxGBps, 3),
            ["memcpy_read_gb_s"] = Math.Round(CopyMedianGBps, 3),
            ["memcpy_read_gb_s_min"] = Math.Round(CopyMinGBps, 3),
            ["memcpy_read_gb_s_max"] = Math.Round(CopyMaxGBps, 3),
        };
    }

    public const long DefaultBytes = 2L << 30;

    public static Command Create()
    {
        var size = new Option<string>("--size") { Description = "Buffer size (default 2GiB, at least 4× the last-level cache)", DefaultValueFactory = _ => "2GiB" };
        var repeats = new Option<int>("--repeats") { Description = "Timed passes of each read", DefaultValueFactory = _ => 7 };
        var json = CommonOptions.Json();
        var cmd = new Command("bandwidth", "Read bandwidth on the decode threads: sum and memcpy of a buffer several times the last-level cache, median and range") { size, repeats, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            bool asJson = parse.GetValue(json);
            long bytes = ShardPipe.Checkpoints.ByteSize.Parse(parse.GetValue(size)!);
            var r = Measure(bytes, parse.GetValue(repeats));
            BenchSupport.Say(asJson, $"bench bandwidth: {r.Bytes / (double)(1 << 30):0.00} GiB buffer (last-level cache {r.LastLevelCacheBytes / (double)(1 << 20):0} MiB), {r.Threads} thread(s), {r.Repeats} passes");
            BenchSupport.Say(asJson, $"  sum read:    median {r.SumMedianGBps:0.00} GB/s (range {r.SumMinGBps:0.00}–{r.SumMaxGBps:0.00})");
            BenchSupport.Say(asJson, $"  memcpy read: median {r.CopyMedianGBps:0.00} GB/s (range {r.CopyMinGBps:0.00}–{r.CopyMaxGBps:0.00})");
            var figures = r.ToJson();
            figures["bench"] = "bandwidth";
            BenchSupport.Finish(figures);
            return 0;
        });
        return cmd;
    }

    /// <summary>The largest cache of cpu0 from /sys (bytes), or 0 where the system does not say.</summary>
    public static long LastLevelCacheBytes()
    {
        const string root = "/sys/devices/system/cpu/cpu0/cache";
        long best = 0;
        if (!Directory.Exists(root)) return 0;
        foreach (var dir in Directory.GetDirectories(root, "index*"))
        {
            string file = Path.Combine(dir, "size");
            if (!File.Exists(file)) continue;
            string text = File.ReadAllText(file).Trim();
            long unit = text.EndsWith('K') ? 1L << 10 : text.EndsWith('M') ? 1L << 20 : text.EndsWith('G') ? 1L << 30 : 1;
            if (long.TryParse(text.TrimEnd('K', 'M', 'G'), out long n)) best = Math.Max(best, n * unit);
        }
        return best;
    }

    /// <summary>Measures sum and memcpy reads of <paramref name="bytes"/> (raised to 4× the last-level cache), each <paramref name="repeats"/> times.</summary>
    public static Result Measure(long bytes = DefaultBytes, int repeats = 7)
    {
        if (repeats < 1) throw new InvalidInputException($"--repeats {repeats}: at least 1");
        using var probe = new Probe(bytes);
        var sums = new List<double>();
        var copies = new List<double>();
        for (int r = 0; r < repeats + 1; r++) // the first pass of each warms up
        {
            double sum = probe.SumGBps(), copy = probe.CopyGBps();
            if (r == 0) continue;
            sums.Add(sum);
            copies.Add(copy);
        }
        return new Result(probe.Bytes, probe.LastLevelCacheBytes, probe.Threads, repeats, Median(sums), sums.Min(), sums.Max(), Median(copies), copies.Min(), copies.Max());
    }

    /// <summary>The median of <paramref name="xs"/> (the mean of the middle two for an even count).</summary>
    public static double Median(IReadOnlyCollection<double> xs)
    {
        var o = xs.Order().ToList();
        return o.Count % 2 == 1 ? o[o.Count / 2] : (o[o.Count / 2 - 1] + o[o.Count / 2]) / 2;
    }

    /// <summary>
    /// A read buffer of several times the last-level cache, every page touched with a value, kept so that a benchmark can
    /// take the baseline again beside each of its own rounds (<c>bench decode</c> pairs each round's decode with the read
    /// measured just before it: the machine's bandwidth drifts between runs, and a baseline taken once, minutes away from
    /// the decode it divides, carried that drift into the ratio).
    /// </summary>
    public sealed unsafe class Probe : IDisposable
    {
        private byte* _buffer;
        private readonly float[] _partial;

        public Probe(long bytes = DefaultBytes)
        {
            LastLevelCacheBytes = ReadBandwidth.LastLevelCacheBytes();
            Bytes = Math.Max(bytes, 4 * LastLevelCacheBytes) / 4096 * 4096;
            if (Bytes <= 0) throw new InvalidInputException($"read buffer of {bytes} bytes: at least 4 KiB");
            Threads = SpinPool.Shared.Helpers + 1;
            _partial = new float[Threads];
            _buffer = (byte*)NativeMemory.AlignedAlloc((nuint)Bytes, 4096);
            byte* buffer = _buffer;
            long size = Bytes;
            int threads = Threads;
            // Touch every page with a value (fresh pages of zeros might be one shared page).
            SpinPool.Shared.Run(threads, p =>
            {
                var (start, length) = Part(size, threads, p);
                for (long o = 0; o < length; o += 1 << 30)
                    new Span<float>(buffer + start + o, (int)(Math.Min(1L << 30, length - o) / 4)).Fill(1f);
            });
        }

        public long Bytes { get; }
        public long LastLevelCacheBytes { get; }
        public int Threads { get; }

        /// <summary>One sum of the whole buffer, split in contiguous parts over the decode threads: GB/s read.</summary>
        public double SumGBps()
        {
            ObjectDisposedException.ThrowIf(_buffer is null, this);
            byte* buffer = _buffer;
            long size = Bytes;
            int threads = Threads;
            var partial = _partial;
            long t0 = Stopwatch.GetTimestamp();
            SpinPool.Shared.Run(threads, p =>
            {
                var (start, length) = Part(size, threads, p);
                partial[p] = Sum(buffer + start, length);
            });
            double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            if (partial.Sum() <= 0) throw new InvalidOperationException("the read buffer summed to nothing");
            return size / seconds / 1e9;
        }

        /// <summary>The median of <paramref name="passes"/> sums after one pass that warms up.</summary>
        public double SumMedianGBps(int passes)
        {
            SumGBps();
            return Median(Enumerable.Range(0, passes).Select(_ => SumGBps()).ToList());
        }

        /// <summary>One memcpy of the buffer's first half into its second, on the same threads: GB/s read.</summary>
        public double CopyGBps()
        {
            ObjectDisposedException.ThrowIf(_buffer is null, this);
            byte* buffer = _buffer;
            long half = Bytes / 2;
            int threads = Threads;
            long t0 = Stopwatch.GetTimestamp();
            SpinPool.Shared.Run(threads, p =>
            {
                var (start, length) = Part(half, threads, p);
                for (long o = 0; o < length; o += 1 << 30)
                {
                    long n = Math.Min(1L << 30, length - o);
                    Buffer.MemoryCopy(buffer + start + o, buffer + half + start + o, n, n);
                }
            });
            return half / Stopwatch.GetElapsedTime(t0).TotalSeconds / 1e9;
        }

        public void Dispose()
        {
            if (_buffer is null) return;
            NativeMemory.AlignedFree(_buffer);
            _buffer = null;
        }
    }

    /// <summary>Part <paramref name="p"/> of <paramref name="parts"/> contiguous ranges of <paramref name="bytes"/>, each a multiple of 4 KiB.</summary>
    private static (long Start, long Length) Part(long bytes, int parts, int p)
    {
        long pages = bytes / 4096;
        long start = pages * p / parts * 4096, end = pages * (p + 1) / parts * 4096;
        return (start, end - start);
    }

    /// <summary>Sums float32 values with four independent vector accumulators (as wide as the machine's vectors).</summary>
    private static unsafe float Sum(byte* p, long bytes)
    {
        float* f = (float*)p;
        long n = bytes / 4, i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<float> a = default, b = default, c = default, d = default;
            for (; i + 64 <= n; i += 64)
            {
                a += Vector512.Load(f + i); b += Vector512.Load(f + i + 16);
                c += Vector512.Load(f + i + 32); d += Vector512.Load(f + i + 48);
            }
            return Vector512.Sum(a + b + c + d) + Tail(f, i, n);
        }
        Vector256<float> x = default, y = default, z = default, w = default;
        for (; i + 32 <= n; i += 32)
        {
            x += Vector256.Load(f + i); y += Vector256.Load(f + i + 8);
            z += Vector256.Load(f + i + 16); w += Vector256.Load(f + i + 24);
        }
        return Vector256.Sum(x + y + z + w) + Tail(f, i, n);
    }

    private static unsafe float Tail(float* f, long i, long n)
    {
        float s = 0;
        for (; i < n; i++) s += f[i];
        return s;
    }
}
