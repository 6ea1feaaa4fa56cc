using System.CommandLine;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe load</c>: load a model across a cluster and show where every layer went.</summary>
public static class LoadCommand
{
    public static Command Create()
    {
        var m = new ModelArguments();
        var json = CommonOptions.Json();
        var cmd = new Command("load", "Load a model across a cluster (default: an embedded 1-node cluster) and report where every layer went") { json };
        m.AddTo(cmd);
        CommandAction.Set(cmd, (parse, log) => Run(parse, m, parse.GetValue(json), log));
        return cmd;
    }

    private static async Task<int> Run(ParseResult parse, ModelArguments m, bool json, ILogger log)
    {
        await using var session = await ClusterSession.ConnectAsync(parse.GetValue(m.Cluster) ?? "embedded:1", parse.GetValue(m.Nodes), log, parse.GetValue(m.OffloadFolder), parse.GetValue(CommonOptions.ClientConfig));
        var loaded = await session.LoadWithProgressAsync(m.LoadRequest(parse), json);
        var result = new JsonObject
        {
            ["hf_device_map"] = ClusterSession.MapJson(loaded.DeviceMap),
            ["devices"] = DeviceReport.Json(loaded.Devices),
            ["load_s"] = Math.Round(loaded.LoadSeconds, 4),
            ["plan_epoch"] = loaded.PlanEpoch,
        };
        if (json) JsonOut.Print(result);
        else DeviceReport.Print($"loaded in {loaded.LoadSeconds:0.00} s (epoch {loaded.PlanEpoch})", loaded.Devices, loaded.DeviceMap);
        return 0;
    }
}
