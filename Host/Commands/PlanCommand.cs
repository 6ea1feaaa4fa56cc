using System.CommandLine;
using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;
using Microsoft.Extensions.Logging;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe plan</c>: where every module goes, from config.json alone (no weights read).</summary>
public static class PlanCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var revision = CommonOptions.Revision();
        var deviceMap = new Option<string>("--device-map") { Description = "auto, balanced, balanced_low_0, sequential, a device, or a JSON object of module -> device", DefaultValueFactory = _ => "auto" };
        var maxMemory = new Option<string?>("--max-memory") { Description = "Budgets, e.g. \"0=2MiB,1=2MiB,cpu=10MiB\" (keys: N, cuda:N, cpu, disk)" };
        var noSplit = new Option<string?>("--no-split-module-classes") { Description = "Classes kept whole (default: the model's; \"\" for none)" };
        var dtype = new Option<string?>("--dtype") { Description = "Target dtype for sizes (default float32)" };
        var nodes = new Option<string?>("--nodes") { Description = "Cluster devices with budgets, each optionally @SPEED (relative; the planner weighs budget × speed): \"w1/cuda:0=8GiB,w2/cpu=16GiB@0.5\"" };
        var json = CommonOptions.Json();
        var cmd = new Command("plan", "Plan a device map (Accelerate's strategies, or across cluster nodes) without reading weights")
            { model, revision, deviceMap, maxMemory, noSplit, dtype, nodes, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            string folder = ModelLocator.Locate(parse.GetValue(model)!, new LocateOptions { Revision = parse.GetValue(revision) });
            var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(folder));
            var tree = meta.ToPlacementTree();
            string? ns = parse.GetValue(noSplit);
            var noSplitClasses = ns is null ? meta.NoSplitModules
                : ns.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
            DType? dt = parse.GetValue(dtype) is { } d ? TorchRuntime.ParseFloatDType(d) : DType.F32;
            PlanResult result;
            if (parse.GetValue(nodes) is { } nodeSpec)
            {
                var (devices, speeds) = DeviceSpeeds.Parse(nodeSpec);
                result = ClusterPlanner.Plan(new ClusterPlanRequest
                {
                    Model = tree,
                    Devices = devices,
                    Speeds = speeds.Count > 0 ? speeds : null,
                    Strategy = parse.GetValue(deviceMap)!,
                    NoSplitModuleClasses = noSplitClasses,
                    DType = dt,
                    Layers = Enumerable.Range(0, meta.NumLayers).Select(meta.LayerPath).ToList(),
                });
            }
            else
            {
                result = DevicePlanner.Plan(new PlanRequest
                {
                    Model = tree,
                    DeviceMap = DeviceMapSpec.Parse(parse.GetValue(deviceMap)!),
                    MaxMemory = parse.GetValue(maxMemory) is { } mm ? MaxMemory.Parse(mm) : null,
                    NoSplitModuleClasses = noSplitClasses,
                    DType = dt,
                });
            }
            log.LogInformation("planned {Modules} map entries in {Ms:0.0} ms (config read, meta tree built, sizes, plan)", result.DeviceMap.Count, clock.Elapsed.TotalMilliseconds);
            var output = PlanJson(result);
            if (parse.GetValue(json)) JsonOut.Print(output);
            else PrintTable(result);
            return 0;
        });
        return cmd;
    }

    /// <summary>The plan JSON (a stable contract): device_map in order, then per-device bytes and budget.</summary>
    public static JsonObject PlanJson(PlanResult r)
    {
        var map = new JsonObject();
        foreach (var (k, v) in r.DeviceMap)
            map[k] = v.ToHfValue() is int i ? JsonValue.Create(i) : JsonValue.Create((string)v.ToHfValue());
        return new JsonObject
        {
            ["device_map"] = map,
            ["devices"] = new JsonArray(r.Devices.Select(d => (JsonNode)new JsonObject
            {
                ["device"] = d.Device.ToHfValue() is int i ? JsonValue.Create(i) : JsonValue.Create(d.Device.ToString()),
                ["bytes"] = Number(d.Bytes),
                ["budget"] = d.Budget is { } b ? Number(b) : null,
            }).ToArray()),
        };
    }

    private static JsonNode Number(double v) => v == Math.Floor(v) && Math.Abs(v) < 9e15 ? JsonValue.Create((long)v) : JsonValue.Create(v);

    private static void PrintTable(PlanResult r)
    {
        Tables.Print(new[] { "device", "bytes>", "budget>", "modules" }, r.Devices.Select(d => new[]
        {
            d.Device.ToString(), ByteSize.Format((long)d.Bytes), d.Budget is { } b ? ByteSize.Format((long)b) : "-",
            string.Join(", ", r.DeviceMap.Where(kv => kv.Value == d.Device).Select(kv => kv.Key.Length == 0 ? "(all)" : kv.Key)),
        }));
    }
}
