using System.CommandLine;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe load</c> and <c>shardpipe status</c>: a cluster as a client sees it.</summary>
public static class LoadCommand
{
    public static Command CreateLoad()
    {
        var m = new ModelArguments();
        var json = CommonOptions.Json();
        var cmd = new Command("load", "Load a model across a cluster (default: an embedded 1-node cluster) and report where every layer went") { json };
        m.AddTo(cmd);
        CommandAction.Set(cmd, (parse, log) => Run(parse, m, json, log).GetAwaiter().GetResult());
        return cmd;
    }

    private static async Task<int> Run(ParseResult parse, ModelArguments m, Option<bool> json, ILogger log)
    {
        await using var session = await ClusterSession.ConnectAsync(parse.GetValue(m.Cluster) ?? "embedded:1", parse.GetValue(m.Nodes), log);
        var loaded = await session.LoadWithProgressAsync(m.LoadRequest(parse));
        var result = new JsonObject
        {
            ["hf_device_map"] = ClusterSession.MapJson(loaded.DeviceMap),
            ["devices"] = Devices(loaded.Devices),
            ["load_s"] = Math.Round(loaded.LoadSeconds, 4),
            ["plan_epoch"] = loaded.PlanEpoch,
        };
        if (parse.GetValue(json)) JsonOut.Print(result);
        else PrintDevices(loaded.Devices, result["hf_device_map"]!.ToJsonString(), $"loaded in {loaded.LoadSeconds:0.00} s");
        return 0;
    }

    public static Command CreateUnload()
    {
        var cluster = new Option<string>("--cluster") { Description = "HOST:PORT of a running cluster", Required = true };
        var cmd = new Command("unload", "Unload the cluster's model: every worker frees its slice") { cluster };
        CommandAction.Set(cmd, (parse, log) => Task.Run(async () =>
        {
            await using var session = await ClusterSession.ConnectAsync(parse.GetValue(cluster)!, null, log);
            await session.Client.UnloadAsync(TimeSpan.FromSeconds(60));
            var s = await session.Client.StatusAsync(TimeSpan.FromSeconds(30));
            Console.WriteLine($"state {s.State}");
            return 0;
        }).GetAwaiter().GetResult());
        return cmd;
    }

    public static Command CreateStatus()
    {
        var cluster = new Option<string>("--cluster") { Description = "embedded:N or HOST:PORT", DefaultValueFactory = _ => "embedded:1" };
        var nodes = new Option<string?>("--nodes") { Description = "Embedded nodes' devices and budgets" };
        var json = CommonOptions.Json();
        var cmd = new Command("status", "Show a cluster's nodes, devices and loaded model") { cluster, nodes, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            return Task.Run(async () =>
            {
                await using var session = await ClusterSession.ConnectAsync(parse.GetValue(cluster)!, parse.GetValue(nodes), log);
                var s = await session.Client.StatusAsync(TimeSpan.FromSeconds(30));
                var result = new JsonObject
                {
                    ["state"] = s.State,
                    ["model"] = s.Model,
                    ["nodes"] = new JsonArray(s.Nodes.Select(n => (JsonNode)JsonValue.Create(n)!).ToArray()),
                    ["hf_device_map"] = ClusterSession.MapJson(s.DeviceMap),
                    ["devices"] = Devices(s.Devices),
                };
                if (parse.GetValue(json)) JsonOut.Print(result);
                else PrintDevices(s.Devices, result["hf_device_map"]!.ToJsonString(), $"state {s.State}, model {s.Model ?? "-"}, nodes {string.Join(", ", s.Nodes)}");
                return 0;
            }).GetAwaiter().GetResult();
        });
        return cmd;
    }

    private static JsonArray Devices(IEnumerable<ShardPipe.Messages.DeviceUsage> devices) =>
        new(devices.Select(d => (JsonNode)new JsonObject
        {
            ["device"] = d.Device, ["bytes"] = d.PlannedBytes, ["loaded_bytes"] = d.LoadedBytes, ["budget"] = d.BudgetBytes, ["streamed"] = d.Streamed,
        }).ToArray());

    private static void PrintDevices(IEnumerable<ShardPipe.Messages.DeviceUsage> devices, string map, string headline)
    {
        Console.WriteLine(headline);
        Console.WriteLine($"{"device",-24} {"planned",12} {"loaded",12} {"budget",12}");
        foreach (var d in devices)
            Console.WriteLine($"{d.Device,-24} {ByteSize.Format(d.PlannedBytes),12} {ByteSize.Format(d.LoadedBytes),12} {ByteSize.Format(d.BudgetBytes),12}{(d.Streamed ? "  (streamed)" : "")}");
        Console.WriteLine($"hf_device_map: {map}");
    }
}
