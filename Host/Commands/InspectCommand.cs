using System.CommandLine;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe inspect</c>: what a checkpoint holds, read from its headers only.</summary>
public static class InspectCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var variant = CommonOptions.Variant();
        var revision = CommonOptions.Revision();
        var subfolder = CommonOptions.Subfolder();
        var tensors = new Option<bool>("--tensors") { Description = "List every tensor (name, dtype, shape, shard)" };
        var json = CommonOptions.Json();
        var cmd = new Command("inspect", "Describe a checkpoint: architecture, config, dtypes, tensors, shards") { model, variant, revision, subfolder, tensors, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            string folder = ModelLocator.Locate(parse.GetValue(model)!, new LocateOptions
            {
                Revision = parse.GetValue(revision),
                Subfolder = parse.GetValue(subfolder),
            });
            var result = Describe(folder, parse.GetValue(variant), parse.GetValue(tensors));
            if (parse.GetValue(json)) JsonOut.Print(result);
            else PrintText(result, folder);
            return 0;
        });
        return cmd;
    }

    /// <summary>The inspect JSON object (keys are a stable contract: other checks read them).</summary>
    public static JsonObject Describe(string folder, string? variant, bool withTensors)
    {
        PretrainedConfig? config = File.Exists(Path.Combine(folder, CheckpointNames.Config)) ? PretrainedConfig.FromFolder(folder) : null;
        using var ckpt = Checkpoint.Open(folder, variant);
        var result = new JsonObject
        {
            ["architecture"] = config?.Architectures.FirstOrDefault(),
            ["model_type"] = config?.ModelType,
            ["config"] = config is null ? null : Summary(config),
            ["dtypes"] = new JsonArray(ckpt.Tensors.Select(t => DTypes.Code(t.Info.DType)).Distinct().Order(StringComparer.Ordinal)
                .Select(s => (JsonNode)JsonValue.Create(s)!).ToArray()),
            ["num_tensors"] = ckpt.Tensors.Count,
            ["total_bytes"] = ckpt.TotalBytes,
            ["shards"] = new JsonArray(ckpt.ShardFiles.Select(s => (JsonNode)JsonValue.Create(s)!).ToArray()),
            ["index_file"] = ckpt.IndexFile,
            ["index_total_size"] = ckpt.Index?.TotalSize,
        };
        if (withTensors)
        {
            result["tensors"] = new JsonArray(ckpt.Tensors.Select(t => (JsonNode)new JsonObject
            {
                ["name"] = t.Name,
                ["dtype"] = DTypes.Code(t.Info.DType),
                ["shape"] = new JsonArray(t.Info.Shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
                ["shard"] = t.Shard,
            }).ToArray());
        }
        return result;
    }

    private static readonly string[] SummaryKeys =
    {
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
        "max_position_embeddings", "torch_dtype", "tie_word_embeddings", "n_embd", "n_layer", "n_head", "n_positions",
        "rope_theta", "sliding_window",
    };

    private static JsonObject Summary(PretrainedConfig config)
    {
        var o = new JsonObject();
        foreach (var k in SummaryKeys)
            if (config.Values.TryGetPropertyValue(k, out var v) && v is not null) o[k] = v.DeepClone();
        return o;
    }

    private static void PrintText(JsonObject r, string folder)
    {
        Console.WriteLine($"model:        {folder}");
        Console.WriteLine($"architecture: {r["architecture"]?.ToString() ?? "(no config.json)"}  (model_type {r["model_type"]?.ToString() ?? "-"})");
        if (r["config"] is JsonObject c)
            Console.WriteLine($"config:       {string.Join(", ", c.Select(kv => $"{kv.Key}={kv.Value?.ToJsonString()}"))}");
        Console.WriteLine($"dtypes:       {string.Join(", ", ((JsonArray)r["dtypes"]!).Select(n => n!.ToString()))}");
        Console.WriteLine($"tensors:      {r["num_tensors"]}");
        long total = (long)r["total_bytes"]!;
        Console.WriteLine($"total bytes:  {total} ({ByteSize.Format(total)})");
        Console.WriteLine($"shards:       {string.Join(", ", ((JsonArray)r["shards"]!).Select(n => n!.ToString()))}");
        if (r["tensors"] is JsonArray ts)
        {
            Console.WriteLine();
            Console.WriteLine($"{"name",-60} {"dtype",-8} {"shape",-20} shard");
            foreach (var t in ts)
                Console.WriteLine($"{t!["name"],-60} {t["dtype"],-8} {"[" + string.Join(", ", ((JsonArray)t["shape"]!).Select(d => d!.ToString())) + "]",-20} {t["shard"]}");
        }
    }
}
