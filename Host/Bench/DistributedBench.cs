using System.CommandLine;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Actors.Client;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;
using ShardPipe.Messages;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench distributed [--heterogeneous]</c>: three <c>shardpipe node</c> processes serve a generated
/// ~134M-parameter Llama, and one greedy generation's decode tokens/s is measured under speed-aware placement (the
/// coordinator's own plan from the speeds its workers report: <c>shardpipe.placement.balance = speed</c>) and under
/// byte-balanced placement (the plan <c>balance = bytes</c> makes, loaded as an explicit map), alternating, in the same
/// run; <c>speedup</c> is the median over rounds of the two generations' ratio in each. With <c>--heterogeneous</c>, node-2 is a slower machine: its steps (and its speed calibration) take
/// <c>--slowdown</c> times their compute time (<c>shardpipe.debug.compute-slowdown</c>; it sleeps the difference, so
/// the machine's shared cores stay free for the other nodes — a slower node simulated honestly on one machine, where
/// pinning a node to "fewer cores" cannot make it slower than nodes that share those cores). node-2 is the middle
/// stage, so that the embedding and the head — which stay on the first and last node whatever the plan — run at full speed.
/// </summary>
public static class DistributedBench
{
    public static Command Create()
    {
        var heterogeneous = new Option<bool>("--heterogeneous") { Description = "node-2 runs --slowdown times slower (simulated: shardpipe.debug.compute-slowdown)" };
        var slowdown = new Option<double>("--slowdown") { Description = "How many times slower node-2 runs with --heterogeneous", DefaultValueFactory = _ => 4 };
        var tokens = new Option<int>("--tokens") { Description = "New tokens per generation", DefaultValueFactory = _ => 48 };
        var rounds = new Option<int>("--rounds") { Description = "Rounds of (speed-aware, byte-balanced) generations; medians are reported", DefaultValueFactory = _ => 2 };
        var json = CommonOptions.Json();
        var cmd = new Command("distributed", "Decode tokens/s over 3 node processes: speed-aware vs byte-balanced placement (--heterogeneous: one slower node)")
            { heterogeneous, slowdown, tokens, rounds, json };
        CommandAction.Set(cmd, (parse, log) => Run(parse.GetValue(heterogeneous), parse.GetValue(slowdown), parse.GetValue(tokens), parse.GetValue(rounds), parse.GetValue(json), log));
        return cmd;
    }

    private const string Budget = "4GiB";

    private static async Task<int> Run(bool heterogeneous, double slowdown, int n, int rounds, bool asJson, ILogger log)
    {
        if (n < 8) throw new InvalidInputException("--tokens must be at least 8");
        if (rounds < 1) throw new InvalidInputException("--rounds must be at least 1");
        if (!double.IsFinite(slowdown) || slowdown < 1) throw new InvalidInputException($"--slowdown must be a number of at least 1, not {slowdown}");
        double factor = heterogeneous ? slowdown : 1;
        string folder = BenchSupport.GeneratedModel("llama-125m", SyntheticLlamaSpec.Llama125M, log);
        int threads = Math.Max(1, Environment.ProcessorCount / 3);
        // No faults are measured here: a node that a loaded machine pauses for seconds must not be taken for lost.
        const string patient = "\nshardpipe.placement.balance = speed\nakka.cluster.failure-detector.acceptable-heartbeat-pause = 30s\nakka.remote.watch-failure-detector.acceptable-heartbeat-pause = 30s";
        using var nodes = new NodeProcesses(3, i => $"shardpipe {{ devices = [ {{ device = cpu, budget = \"{Budget}\" }} ], compute-threads = {threads} }}" + patient +
            (i == 2 && factor > 1 ? $"\nshardpipe.debug.compute-slowdown = {factor.ToString(System.Globalization.CultureInfo.InvariantCulture)}" : ""));
        await using var client = ShardPipeClient.Connect(ContactPoints.Parse(nodes.Contacts));
        await client.WaitForNodesAsync(3, TimeSpan.FromMinutes(2));
        var speeds = await ReportedSpeeds(client);
        BenchSupport.Say(asJson, $"bench distributed{(heterogeneous ? $" --heterogeneous (node-2 × {factor:0.##} slower)" : "")}: {folder} on 3 node processes; " +
                                 $"calibrated speeds {string.Join(", ", speeds.Select(kv => $"{kv.Key} {kv.Value / 1e9:0.00} GB/s"))}");
        string byteMap = ByteBalancedMap(folder);

        var prompt = new[] { new long[] { 1, 306, 4966, 304, 5434, 278, 3186, 29889 } };
        Generate Request(int tokens) => new(Guid.NewGuid().ToString("N"), prompt, null, tokens, true, new SamplingSettings(true, 0, 0, 1, 0));
        var speedRates = new List<double>();
        var byteRates = new List<double>();
        Dictionary<string, int> speedLayers = new(), byteLayers = new();
        long[]? reference = null;
        bool equal = true;
        for (int round = 0; round < rounds; round++)
        {
            foreach (bool speedAware in new[] { true, false })
            {
                // Speed-aware: the coordinator plans "balanced" from the speeds its workers report (calibration, then their steps).
                var loaded = await client.LoadAsync(new LoadModel(Guid.NewGuid().ToString("N"), folder, null, "float32", speedAware ? "balanced" : byteMap, null, null), TimeSpan.FromMinutes(10));
                var layers = LayersPerNode(loaded.DeviceMap);
                await client.RunAsync(Request(8), loaded.Stages, TimeSpan.FromSeconds(120)); // warm-up
                var outcome = await client.RunAsync(Request(n), loaded.Stages, TimeSpan.FromSeconds(300));
                reference ??= outcome.NewTokens[0].ToArray();
                equal &= outcome.NewTokens[0].SequenceEqual(reference); // greedy: placement must not change a token
                (speedAware ? speedRates : byteRates).Add(outcome.TokensPerSecond);
                if (speedAware) speedLayers = layers; else byteLayers = layers;
                BenchSupport.Say(asJson, $"  round {round + 1} {(speedAware ? "speed-aware  " : "byte-balanced")}: layers {Describe(layers)}, {outcome.TokensPerSecond:0.00} tokens/s");
                await client.UnloadAsync(TimeSpan.FromSeconds(60));
            }
        }
        double speedMedian = Median(speedRates), byteMedian = Median(byteRates);
        // Each round's two generations ran back to back: their ratio is robust to a shared machine's load drifting between rounds.
        var ratios = speedRates.Zip(byteRates, (a, b) => b > 0 ? a / b : 0).ToList();
        double speedup = Median(ratios);
        var reported = await ReportedSpeeds(client);
        BenchSupport.Say(asJson, $"  speed-aware {speedMedian:0.00} tokens/s vs byte-balanced {byteMedian:0.00} tokens/s (medians of {rounds}); speed-aware over byte-balanced per round {string.Join(", ", ratios.Select(r => $"{r:0.00}×"))}, median {speedup:0.00}×; tokens {(equal ? "equal" : "DIFFERENT")}");
        BenchSupport.Finish(new JsonObject
        {
            ["bench"] = "distributed",
            ["heterogeneous"] = heterogeneous,
            ["slow_node"] = heterogeneous ? "node-2" : null,
            ["slowdown"] = factor,
            ["tokens"] = n,
            ["rounds"] = rounds,
            ["speed_aware_tokens_per_s"] = Math.Round(speedMedian, 3),
            ["byte_balanced_tokens_per_s"] = Math.Round(byteMedian, 3),
            ["speedup"] = Math.Round(speedup, 3),
            ["speedup_per_round"] = new JsonArray(ratios.Select(r => (JsonNode)Math.Round(r, 3)).ToArray()),
            ["speed_aware_layers"] = Layers(speedLayers),
            ["byte_balanced_layers"] = Layers(byteLayers),
            ["speed_aware_tokens_per_s_runs"] = new JsonArray(speedRates.Select(r => (JsonNode)Math.Round(r, 3)).ToArray()),
            ["byte_balanced_tokens_per_s_runs"] = new JsonArray(byteRates.Select(r => (JsonNode)Math.Round(r, 3)).ToArray()),
            ["calibrated_speeds_bytes_per_s"] = Speeds(speeds),
            ["reported_speeds_bytes_per_s"] = Speeds(reported),
            ["tokens_equal"] = equal,
        });
        return equal ? 0 : 1;
    }

    /// <summary>The speeds the workers report, once all three have.</summary>
    private static async Task<Dictionary<string, double>> ReportedSpeeds(ShardPipeClient client)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            var status = await client.StatusAsync(TimeSpan.FromSeconds(10));
            var speeds = (status.Timings ?? Array.Empty<DeviceTiming>()).Where(t => t.Speed is not null).ToDictionary(t => t.Device, t => t.Speed!.Value);
            if (speeds.Count == 3) return speeds;
            if (DateTime.UtcNow > deadline) throw new ClusterException($"only {speeds.Count} of 3 workers reported a speed within 60 s");
            await Task.Delay(200);
        }
    }

    /// <summary>What <c>shardpipe.placement.balance = bytes</c> plans over these nodes: the same planner, no speeds, as an explicit map.</summary>
    private static string ByteBalancedMap(string folder)
    {
        var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(folder));
        var plan = ClusterPlanner.Plan(new ClusterPlanRequest
        {
            Model = meta.ToPlacementTree(), NoSplitModuleClasses = meta.NoSplitModules, DType = DType.F32,
            Devices = MaxMemory.Parse($"node-1/cpu={Budget},node-2/cpu={Budget},node-3/cpu={Budget}"),
            Layers = Enumerable.Range(0, meta.NumLayers).Select(meta.LayerPath).ToList(),
        });
        return new JsonObject(plan.DeviceMap.Select(kv => new KeyValuePair<string, JsonNode?>(kv.Key, kv.Value.ToString()))).ToJsonString();
    }

    private static Dictionary<string, int> LayersPerNode(DeviceMapEntry[] map) => Enumerable.Range(1, 3).ToDictionary(i => $"node-{i}",
        i => map.Count(e => e.Module.StartsWith("model.layers.", StringComparison.Ordinal) && e.Device.StartsWith($"node-{i}/", StringComparison.Ordinal)));

    private static string Describe(Dictionary<string, int> layers) => string.Join(" / ", layers.Select(kv => $"{kv.Key} {kv.Value}"));

    private static JsonObject Layers(Dictionary<string, int> layers) => new(layers.Select(kv => new KeyValuePair<string, JsonNode?>(kv.Key, kv.Value)));

    private static JsonObject Speeds(Dictionary<string, double> speeds) => new(speeds.OrderBy(kv => kv.Key, NaturalOrder.Instance).Select(kv => new KeyValuePair<string, JsonNode?>(kv.Key, Math.Round(kv.Value))));

    private static double Median(List<double> xs)
    {
        var sorted = xs.Order().ToList();
        return sorted.Count == 0 ? 0 : sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
    }
}
