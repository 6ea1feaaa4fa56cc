using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using TorchSharp;
using static TorchSharp.torch;
using System.CommandLine.Parsing;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe forward</c>: one forward pass; prints the last position's logits of every row.</summary>
public static class ForwardCommand
{
    public static Command Create()
    {
        var m = new ModelArguments();
        var ids = new Option<string>("--input-ids") { Description = "Token ids, rows separated by ';' (e.g. \"1,2,3;4,5,6\")", Required = true };
        var mask = new Option<string?>("--attention-mask") { Description = "0/1 per token, same shape as --input-ids (0 = left padding)" };
        var pos = new Option<string?>("--position-ids") { Description = "Positions per token (default 0..T-1 for every row, as HF's forward)" };
        var hooks = new Option<bool>("--memory-hooks") { Description = "add_memory_hooks: print every module's RSS before/after its forward and the difference (in this process only)" };
        var json = CommonOptions.Json();
        var cmd = new Command("forward", "Run one forward pass in this process and print the last logits of every row") { ids, mask, pos, hooks, json };
        m.AddTo(cmd);
        CommandAction.Set(cmd, async (parse, log) =>
        {
            var rows = ModelArguments.ParseRows(parse.GetValue(ids)!, "--input-ids");
            var maskRows = parse.GetValue(mask) is { } ms ? ModelArguments.ParseRows(ms, "--attention-mask") : null;
            var posRows = parse.GetValue(pos) is { } ps ? ModelArguments.ParseRows(ps, "--position-ids") : null;
            if (parse.GetValue(m.Cluster) is { } cluster)
                return parse.GetValue(hooks) ? throw new InvalidInputException("--memory-hooks measures modules in this process: leave out --cluster")
                    : await OnCluster(parse, m, cluster, rows, maskRows, posRows, parse.GetValue(json), log);
            var sw = Stopwatch.StartNew();
            var model = PreTrainedModel.FromPretrained(parse.GetValue(m.Model)!, m.Options(parse, log));
            double loadS = sw.Elapsed.TotalSeconds;
            ModelArguments.ValidateInputs(model, rows, maskRows, posRows);
            using var scope = NewDisposeScope();
            static Tensor T(long[][] r) => tensor(r.SelectMany(x => x).ToArray(), new long[] { r.Length, r[0].Length });
            if (parse.GetValue(hooks)) model.AddMemoryHooks();
            sw.Restart();
            var logits = model.Forward(T(rows), maskRows is null ? null : T(maskRows), posRows is null ? null : T(posRows), lastOnly: true);
            double forwardS = sw.Elapsed.TotalSeconds;
            var last = Enumerable.Range(0, rows.Length).Select(b => logits[b, 0].data<float>().ToArray()).ToArray();
            var result = new JsonObject
            {
                ["last_logits"] = LogitsJson(last),
                ["argmax"] = ArgmaxJson(last),
                ["dtype"] = model.DType.ToString().ToLowerInvariant(),
                ["hf_device_map"] = HostJson.DeviceMap(model.HfDeviceMap),
                ["load_s"] = Math.Round(loadS, 4),
                ["forward_s"] = Math.Round(forwardS, 4),
                ["recovered_faults"] = 0,
            };
            if (parse.GetValue(hooks)) result["memory_hooks"] = MemoryHooksJson(model);
            Print(result, last, parse.GetValue(json));
            return 0;
        });
        return cmd;
    }

    /// <summary>Every module's <c>mem_rss_pre_forward</c>, <c>mem_rss_post_forward</c> and <c>mem_rss_diff</c> (bytes), in named_modules order.</summary>
    private static JsonArray MemoryHooksJson(ShardPipe.Modeling.Models.CausalLMModel model) =>
        new(model.MemoryHooksState().Select(m => (JsonNode)new JsonObject
        {
            ["module"] = m.Path,
            ["class"] = m.ClassName,
            ["mem_rss_pre_forward"] = m.State.MemRssPreForward,
            ["mem_rss_post_forward"] = m.State.MemRssPostForward,
            ["mem_rss_diff"] = m.State.MemRssDiff,
        }).ToArray());

    /// <summary>One line per module, columns aligned (module paths are long: a boxed table would wrap them).</summary>
    private static void PrintMemoryHooks(JsonArray hooks)
    {
        var rows = hooks.Select(h => new[] { h!["module"]!.GetValue<string>() is { Length: > 0 } p ? p : "(model)", h["class"]!.ToString(),
            h["mem_rss_pre_forward"]!.ToString(), h["mem_rss_post_forward"]!.ToString(), h["mem_rss_diff"]!.ToString() }).ToList();
        var header = new[] { "module", "class", "mem_rss_pre_forward", "mem_rss_post_forward", "mem_rss_diff" };
        var widths = header.Select((c, i) => rows.Select(r => r[i].Length).Append(c.Length).Max()).ToArray();
        string Line(string[] r) => string.Join("  ", r.Select((cell, i) => i < 2 ? cell.PadRight(widths[i]) : cell.PadLeft(widths[i]))).TrimEnd();
        Tables.Line("memory hooks (process RSS in bytes around each module's forward):");
        Tables.Line(Line(header));
        foreach (var r in rows) Tables.Line(Line(r));
    }

    private static JsonArray LogitsJson(float[][] last) =>
        new(last.Select(r => (JsonNode)new JsonArray(r.Select(v => (JsonNode)JsonValue.Create(v)!).ToArray())).ToArray());

    private static JsonArray ArgmaxJson(float[][] last) =>
        new(last.Select(r => (JsonNode)JsonValue.Create(Array.IndexOf(r, r.Max()))!).ToArray());

    private static void Print(JsonObject result, float[][] last, bool json)
    {
        if (json) JsonOut.Print(result);
        else
        {
            var argmax = (JsonArray)result["argmax"]!;
            for (int b = 0; b < last.Length; b++)
            {
                var top = last[b].Select((v, i) => (v, i)).OrderByDescending(x => x.v).Take(5);
                Console.WriteLine($"row {b}: argmax {argmax[b]}; top-5 {string.Join(", ", top.Select(x => $"{x.i}:{x.v:0.0000}"))}");
            }
            if (result["hf_device_map"] is JsonObject map) Console.WriteLine($"hf_device_map: {map.ToJsonString()}");
            if (result["memory_hooks"] is JsonArray hooks) PrintMemoryHooks(hooks);
        }
    }

    /// <summary>The same forward pass through the cluster's pipeline of device workers.</summary>
    private static async Task<int> OnCluster(ParseResult parse, ModelArguments m, string cluster, long[][] rows, long[][]? mask, long[][]? pos, bool json, ILogger log)
    {
        await using var session = await ClusterSession.ConnectAsync(cluster, parse.GetValue(m.Nodes), log, parse.GetValue(m.OffloadFolder), parse.GetValue(CommonOptions.ClientConfig));
        var (stages, map, loadS) = await session.EnsureLoadedAsync(m.LoadRequest(parse), log, json);
        var sw = Stopwatch.StartNew();
        var outcome = await session.Client.RunAsync(new ShardPipe.Messages.Forward(Guid.NewGuid().ToString("N"), rows, mask, pos), stages, TimeSpan.FromSeconds(60));
        var last = outcome.LastLogits!;
        var result = new JsonObject
        {
            ["last_logits"] = LogitsJson(last),
            ["argmax"] = ArgmaxJson(last),
            ["hf_device_map"] = map,
            ["load_s"] = Math.Round(loadS, 4),
            ["forward_s"] = Math.Round(sw.Elapsed.TotalSeconds, 4),
            ["recovered_faults"] = outcome.RecoveredFaults,
        };
        Print(result, last, json);
        return 0;
    }
}
