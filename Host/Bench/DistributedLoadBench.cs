using System.CommandLine;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Akka.Configuration;
using Microsoft.Extensions.Logging;
using ShardPipe.Actors.Client;
using ShardPipe.Actors.Hosting;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;
using ShardPipe.Messages;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench distributed-load</c>: loads a ≥1 GiB generated checkpoint over 3 <c>shardpipe node</c>
/// processes on loopback and, for each node, compares (peak RSS during the load − its idle RSS before it) with
/// the bytes of its slice; the same model loaded on a single node process in the same run is the baseline time.
/// </summary>
public static class DistributedLoadBench
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Checkpoint folder (default: a generated ≥1 GiB fp32 Llama)" };
        var json = CommonOptions.Json();
        var cmd = new Command("distributed-load", "Load over 3 node processes: per-node peak RSS over its slice, vs a single-node load") { model, json };
        CommandAction.Set(cmd, (parse, log) => Run(parse.GetValue(model), parse.GetValue(json), log));
        return cmd;
    }

    private sealed record Measured(double LoadSeconds, List<(string Node, long Idle, long Peak, long Slice)> Nodes);

    private static async Task<int> Run(string? modelArg, bool asJson, ILogger log)
    {
        string folder = modelArg is { } d ? ModelLocator.Locate(d) : BenchSupport.GeneratedModel("llama-1g", SyntheticLlamaSpec.Llama1GiB, log);
        long modelBytes;
        using (var ckpt = Checkpoint.Open(folder)) modelBytes = ckpt.TotalBytes;
        BenchSupport.Say(asJson, $"bench distributed-load: {folder}, {ByteSize.Format(modelBytes)}");
        var three = await Measure(folder, 3, log);
        var one = await Measure(folder, 1, log);
        foreach (var n in three.Nodes)
            BenchSupport.Say(asJson, $"  {n.Node}: slice {ByteSize.Format(n.Slice)}, idle RSS {ByteSize.Format(n.Idle)}, peak {ByteSize.Format(n.Peak)}, " +
                                     $"peak − idle = {(n.Peak - n.Idle) / (double)n.Slice:0.000} × slice");
        BenchSupport.Say(asJson, $"  3 nodes: {three.LoadSeconds:0.000} s; 1 node: {one.LoadSeconds:0.000} s");
        BenchSupport.Finish(new JsonObject
        {
            ["bench"] = "distributed-load",
            ["model_bytes"] = modelBytes,
            ["max_node_rss_over_slice"] = Math.Round(three.Nodes.Max(n => (n.Peak - n.Idle) / (double)n.Slice), 4),
            ["runtime_overhead_bytes"] = three.Nodes.Max(n => n.Idle),
            ["load_s"] = Math.Round(three.LoadSeconds, 4),
            ["single_node_load_s"] = Math.Round(one.LoadSeconds, 4),
            ["single_node_rss_over_slice"] = Math.Round(one.Nodes.Max(n => (n.Peak - n.Idle) / (double)n.Slice), 4),
        });
        return 0;
    }


    /// <summary>Starts <paramref name="count"/> node processes, loads once, reads every node's RSS from /proc.</summary>
    private static async Task<Measured> Measure(string folder, int count, ILogger log)
    {
        string dir = Path.Combine(Path.GetTempPath(), "shardpipe-dload-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        using var nodeProcesses = new NodeProcesses(count, _ => "shardpipe.devices = [ { device = cpu, budget = \"4GiB\" } ]");
        var processes = Enumerable.Range(1, count).Select(i => (Name: $"node-{i}", Process: nodeProcesses[i])).ToList();
        ShardPipeClient? client = null;
        try
        {
            client = ShardPipeClient.Connect(ContactPoints.Parse(nodeProcesses.Contacts));
            var api = client;
            await api.WaitForNodesAsync(count, TimeSpan.FromSeconds(120));
            // Warm every node (JIT, libtorch start-up) with a tiny model, so that the figures are about the load itself.
            string tiny = Path.Combine(dir, "warm-up");
            SyntheticLlama.Write(tiny, new SyntheticLlamaSpec { NumLayers = 6, MaxShardSize = "200KB" });
            await api.LoadAsync(new LoadModel(Guid.NewGuid().ToString("N"), tiny, null, "float32", "balanced", null, null), TimeSpan.FromMinutes(5));
            await api.UnloadAsync(TimeSpan.FromSeconds(30));
            await Task.Delay(2000); // let start-up settle before the idle reading
            var idle = processes.ToDictionary(p => p.Name, p => ProcessMemory.ResetPeakAndReadRss(p.Process.Id.ToString()));
            var sw = Stopwatch.StartNew();
            var loaded = await api.LoadAsync(new LoadModel(Guid.NewGuid().ToString("N"), folder, null, "float32", "balanced", null, null), TimeSpan.FromMinutes(20));
            double seconds = sw.Elapsed.TotalSeconds;
            var nodes = processes.Select(p => (p.Name, idle[p.Name], ProcessMemory.PeakRss(p.Process.Id.ToString()),
                loaded.Devices.Where(d => d.Device.StartsWith(p.Name + "/", StringComparison.Ordinal)).Sum(d => d.LoadedBytes))).ToList();
            log.LogInformation("{Count} node(s) loaded {Bytes} in {Seconds:0.000} s", count, ByteSize.Format(nodes.Sum(n => n.Item4)), seconds);
            return new Measured(seconds, nodes);
        }
        finally
        {
            if (client is not null) await client.DisposeAsync();
            Directory.Delete(dir, recursive: true);
        }
    }
}
