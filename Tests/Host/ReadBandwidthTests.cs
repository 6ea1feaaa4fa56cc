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
