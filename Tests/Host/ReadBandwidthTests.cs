using System.Text.Json.Nodes;
using ShardPipe.Host.Bench;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>The read-bandwidth baseline's contract (not its speed: benchmarks measure that): the buffer outgrows the cache, figures are ordered, stdout is one JSON line.</summary>
public class ReadBandwidthTests
{
    [Fact]
    public void The_buffer_is_at_least_four_times_the_last_level_cache_and_median_lies_in_the_range()
    {
        long llc = ReadBandwidth.LastLevelCacheBytes();
        // Linux reports cache sizes under /sys/devices/system/cpu/cpu0/cache — where the kernel exposes them (some VMs do not).
        if (OperatingSystem.IsLinux() && Directory.Exists("/sys/devices/system/cpu/cpu0/cache/index0")) Assert.True(llc > 0, "the kernel lists cpu0's caches but none was read");
        var r = ReadBandwidth.Measure(1 << 20, repeats: 3);
        Assert.True(r.Bytes >= 4 * llc && r.Bytes >= 1 << 20, $"{r.Bytes} bytes against a {llc}-byte cache");
        Assert.Equal(Environment.ProcessorCount, r.Threads);
        Assert.InRange(r.SumMedianGBps, r.SumMinGBps, r.SumMaxGBps);
        Assert.InRange(r.CopyMedianGBps, r.CopyMinGBps, r.CopyMaxGBps);
        Assert.True(r.SumMinGBps > 0 && r.CopyMinGBps > 0);
        Assert.Throws<InvalidInputException>(() => ReadBandwidth.Measure(1 << 20, repeats: 0));
    }

    [Fact]
    public void Decode_read_ratios_pair_each_round_with_the_baseline_measured_beside_it()
    {
        // Three rounds: the machine read 20, 40 and 30 GB/s beside bf16 decodes of 100, 150 and 120 tokens/s of 1e8
        // active parameters (2e8 bytes a token): paired ratios 1.0, 0.75, 0.8 — median 0.8, range 0.75–1.0. The best
        // rate over the median baseline (150 × 2e8 / 30e9 = 1.0) would credit one round's rate to another's bandwidth.
        var empty = new Dictionary<string, double>();
        var r = new DecodeSpeed.Result(60, 150, 4L << 28, 30, empty, empty, 0, 0, 0, 0)
        {
            ActiveParameters = 100_000_000,
            TotalParameters = 100_000_000,
            RoundBaselines = new[] { 20.0, 40.0, 30.0 },
            RoundBf16TokensPerS = new[] { 100.0, 150.0, 120.0 },
            RoundFp32TokensPerS = new[] { 50.0, 60.0, 40.0 },
        };
        Assert.Equal(0.8, r.ActiveWeightReadRatioBf16, 9);
        Assert.Equal((0.75, 1.0), r.ActiveWeightReadRatioBf16Range);
        // float32: 4e8 bytes a token → 1.0, 0.6, 0.5333…: median 0.6.
        Assert.Equal(0.6, r.ActiveWeightReadRatioFp32, 9);
        var probe = new ReadBandwidth.Probe(1 << 20);
        Assert.True(probe.SumMedianGBps(3) > 0 && probe.CopyGBps() > 0);
        probe.Dispose();
        Assert.Throws<ObjectDisposedException>(() => probe.SumGBps());
    }

    [Fact]
    public void Bench_bandwidth_json_prints_exactly_one_json_line()
    {
        var cli = ShardPipeProcess.Run("bench", "bandwidth", "--size", "1MiB", "--repeats", "1", "--json");
        Assert.True(cli.ExitCode == 0, cli.Stderr);
        var lines = cli.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        var o = JsonNode.Parse(lines[0])!.AsObject();
        Assert.Equal("bandwidth", o["bench"]!.GetValue<string>());
        foreach (var key in new[] { "sum_read_gb_s", "sum_read_gb_s_min", "sum_read_gb_s_max", "memcpy_read_gb_s", "buffer_bytes", "last_level_cache_bytes", "threads" })
            Assert.True(o.ContainsKey(key), key);
    }
}
