using System.CommandLine;
using System.Text.Json.Nodes;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe status</c>: a cluster as a client sees it — nodes, refused devices, the model and its map.</summary>
public static class StatusCommand
{
    public static Command Create()
    {
        var cluster = new Option<string>("--cluster") { Description = "embedded:N or HOST:PORT", DefaultValueFactory = _ => "embedded:1" };
        var nodes = new Option<string?>("--nodes") { Description = "Embedded nodes' devices and budgets" };
        var json = CommonOptions.Json();
        var cmd = new Command("status", "Show a cluster's nodes, devices and loaded model") { cluster, nodes, json };
        CommandAction.Set(cmd, async (parse, log) =>
        {
            await using var session = await ClusterSession.ConnectAsync(parse.GetValue(cluster)!, parse.GetValue(nodes), log, clientConfig: parse.GetValue(CommonOptions.ClientConfig));
            var s = await session.Client.StatusAsync(TimeSpan.FromSeconds(30));
            var refused = s.Refused ?? Array.Empty<ShardPipe.Messages.RefusedDevice>();
            var speeds = s.Timings ?? Array.Empty<ShardPipe.Messages.DeviceTiming>();
            // Each stage's prefix cache as its worker last reported it (hit rate at the first stage, which plans reuse).
            var prefix = (s.Timings ?? Array.Empty<ShardPipe.Messages.DeviceTiming>()).Where(t => t.Timing.PrefixCache is not null).ToList();
            var result = new JsonObject
            {
                ["state"] = s.StateName,
                ["model"] = s.Model,
                ["nodes"] = new JsonArray(s.Nodes.Select(n => (JsonNode)JsonValue.Create(n)!).ToArray()),
                ["hf_device_map"] = ClusterSession.MapJson(s.DeviceMap),
                ["devices"] = DeviceReport.Json(s.Devices),
                ["plan_epoch"] = s.PlanEpoch,
                ["detail"] = s.Detail,
                ["in_flight"] = s.InFlight,
                ["queued"] = s.Queued,
                ["recoveries"] = s.Recoveries,
                ["moved"] = ClusterSession.MapJson(s.Moved ?? Array.Empty<ShardPipe.Messages.DeviceMapEntry>()),
                ["refused"] = new JsonArray(refused.Select(r => (JsonNode)new JsonObject { ["device"] = r.Device, ["reason"] = r.Reason }).ToArray()),
                // Each device's measured speed (bytes of weights per second; speed-aware placement weighs by it), null when its node reported none.
                ["speeds"] = new JsonObject(speeds.Select(t => new KeyValuePair<string, JsonNode?>(t.Device, t.Speed is { } v ? JsonValue.Create(Math.Round(v)) : null))),
                ["drains"] = new JsonArray((s.Drains ?? []).Select(d => (JsonNode)new JsonObject { ["node"] = d.Node, ["phase"] = d.Phase }).ToArray()),
                ["prefix_cache"] = new JsonArray(prefix.Select(t => (JsonNode)new JsonObject
                {
                    ["device"] = t.Device, ["hit_rate"] = Math.Round(t.Timing.PrefixCache!.HitRate, 4), ["prompt_tokens"] = t.Timing.PrefixCache.PromptTokens,
                    ["reused_tokens"] = t.Timing.PrefixCache.ReusedTokens, ["cached_bytes"] = t.Timing.PrefixCache.CachedBytes, ["blocks"] = t.Timing.PrefixCache.Blocks,
                    ["evictions"] = t.Timing.PrefixCache.Evictions, ["restarts"] = t.Timing.PrefixCache.Restarts,
                }).ToArray()),
            };
            if (parse.GetValue(json)) JsonOut.Print(result);
            else
            {
                DeviceReport.Print($"state {s.StateName}{(s.Detail is { } d ? $" ({d})" : "")}, model {s.Model ?? "-"}, epoch {s.PlanEpoch}, nodes {string.Join(", ", s.Nodes)}",
                    s.Devices, s.DeviceMap);
                if (s.Recoveries > 0)
                    Console.WriteLine($"recoveries {s.Recoveries}; the last moved {(s.Moved is { Length: > 0 } m ? string.Join(", ", m.Select(e => $"{e.Module} → {e.Device}")) : "nothing")}");
                if (speeds.Any(t => t.Speed is not null))
                    Console.WriteLine($"speeds {string.Join(", ", speeds.Select(t => $"{t.Device} {(t.Speed is { } v ? ShardPipe.Actors.Workers.DeviceSpeed.Format(v) : "-")}"))}");
                if (s.Drains is { Length: > 0 } drains) Console.WriteLine($"draining {string.Join(", ", drains.Select(d => $"{d.Node} ({d.Phase})"))}");
                if (prefix.Count > 0)
                    Tables.Print(new[] { "device", "hit rate>", "cached>", "blocks>", "evictions>", "restarts>" }, prefix.Select(t => new[]
                    {
                        t.Device, $"{t.Timing.PrefixCache!.HitRate:P1}", ShardPipe.Checkpoints.ByteSize.Format(t.Timing.PrefixCache.CachedBytes),
                        t.Timing.PrefixCache.Blocks.ToString(), t.Timing.PrefixCache.Evictions.ToString(), t.Timing.PrefixCache.Restarts.ToString(),
                    }), "prefix cache");
                if (refused.Length > 0) Tables.Print(new[] { "refused device", "reason" }, refused.Select(r => new[] { r.Device, r.Reason }));
            }
            return 0;
        });
        return cmd;
    }
}
