using System.CommandLine;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;

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
        var dtype = new Option<string?>("--dtype") { Description = "dtype for num_parameters/memory_footprint_bytes (default float32, as from_pretrained)" };
        var cmd = new Command("inspect", "Describe a checkpoint: architecture, config, dtypes, tensors, shards") { model, variant, revision, subfolder, tensors, dtype, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            string folder = ModelLocator.Locate(parse.GetValue(model)!, new LocateOptions
            {
                Revision = parse.GetValue(revision),
                Subfolder = parse.GetValue(subfolder),
            });
            var result = Describe(folder, parse.GetValue(variant), parse.GetValue(tensors), parse.GetValue(dtype));
            if (parse.GetValue(json)) JsonOut.Print(result);
            else PrintText(result, folder);
            return 0;
        });
        return cmd;
    }

    /// <summary>The inspect JSON object (keys are a stable contract: other checks read them).</summary>
    public static JsonObject Describe(string folder, string? variant, bool withTensors, string? dtype = null)
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
        AddModelFigures(result, config, ckpt, dtype);
        result["quantization"] = Quantization(config, ckpt);
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

    /// <summary>Parameter counts, footprint and buffers from the model code's meta tree (no weights read); null for an unknown architecture.</summary>
    private static void AddModelFigures(JsonObject result, PretrainedConfig? config, Checkpoint ckpt, string? dtype)
    {
        CausalLMModel? meta = null;
        if (config is not null)
        {
            try { meta = AutoModel.FromConfig(config); }
            catch (UnsupportedException) { meta = null; }
        }
        if (meta is null)
        {
            result["num_parameters"] = null;
            result["num_parameters_exclude_embeddings"] = null;
            result["memory_footprint_bytes"] = null;
            return;
        }
        var dt = dtype is null ? DType.F32 : dtype == "auto"
            ? (config!.TorchDtype is { } td && DTypes.TryParseTorchName(td, out var c) ? c : ckpt.Tensors.Select(t => t.Info.DType).FirstOrDefault(DTypes.IsFloating, DType.F32))
            : TorchRuntime.ParseFloatDType(dtype);
        result["loaded_dtype"] = DTypes.TorchName(dt);
        result["num_parameters"] = meta.NumParameters();
        result["num_parameters_exclude_embeddings"] = meta.NumParameters(excludeEmbeddings: true);
        result["memory_footprint_bytes"] = meta.GetMemoryFootprint(dt);
        result["buffers"] = new JsonArray(meta.NamedBuffers().Select(b => (JsonNode)new JsonObject
        {
            ["name"] = b.Key,
            ["dtype"] = DTypes.Code(b.Slot.FixedDType ?? dt),
            ["shape"] = new JsonArray(b.Slot.Shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
            ["persistent"] = b.Slot.Persistent,
        }).ToArray());
    }

    /// <summary>config.json's quantization_config as ShardPipe reads it, and the bytes its packed Linears take (null: not quantized).</summary>
    private static JsonObject? Quantization(PretrainedConfig? config, Checkpoint ckpt)
    {
        if (config?.GetObject("quantization_config") is not { } raw) return null;
        QuantizationConfig? q;
        try { q = QuantizationConfig.From(config); }
        catch (ShardPipeException ex)
        {
            return new JsonObject { ["quant_method"] = raw["quant_method"]?.DeepClone(), ["supported"] = false, ["error"] = ex.Message };
        }
        var packed = ckpt.Tensors.Where(t => t.Name.EndsWith(".qweight", StringComparison.Ordinal) || t.Name.EndsWith(".weight_packed", StringComparison.Ordinal)
            || (q!.Format == QuantFormat.IntQuantized && t.Info.DType == DType.I8)).ToList();
        return new JsonObject
        {
            ["quant_method"] = q!.QuantMethod,
            ["format"] = q.Format switch { QuantFormat.Gptq => "gptq", QuantFormat.AwqGemm => "awq-gemm", QuantFormat.PackQuantized => "pack-quantized", _ => "int-quantized" },
            ["bits"] = q.Bits,
            ["group_size"] = q.GroupSize,
            ["symmetric"] = q.Symmetric,
            ["desc_act"] = q.DescAct,
            ["supported"] = true,
            ["quantized_modules"] = packed.Count,
            ["packed_weight_bytes"] = packed.Sum(t => t.Info.ByteLength),
        };
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
        static string Shape(JsonNode? shape) => "[" + string.Join(", ", ((JsonArray)shape!).Select(d => d!.ToString())) + "]";
        static string List(JsonNode? items) => string.Join(", ", ((JsonArray)items!).Select(n => n!.ToString()));
        long total = (long)r["total_bytes"]!;
        var rows = new List<string[]>
        {
            new[] { "model", folder },
            new[] { "architecture", $"{r["architecture"]?.ToString() ?? "(no config.json)"} (model_type {r["model_type"]?.ToString() ?? "-"})" },
        };
        if (r["config"] is JsonObject c) rows.Add(new[] { "config", string.Join(", ", c.Select(kv => $"{kv.Key}={kv.Value?.ToJsonString()}")) });
        rows.Add(new[] { "dtypes", List(r["dtypes"]) });
        rows.Add(new[] { "tensors", r["num_tensors"]!.ToString() });
        rows.Add(new[] { "total bytes", $"{total} ({ByteSize.Format(total)})" });
        rows.Add(new[] { "shards", List(r["shards"]) });
        if (r["quantization"] is JsonObject q)
            rows.Add(new[] { "quantization", q["supported"]!.GetValue<bool>()
                ? $"{q["quant_method"]} ({q["format"]}), {q["bits"]}-bit, group {q["group_size"]}, {(q["symmetric"]!.GetValue<bool>() ? "symmetric" : "zero points")}{(q["desc_act"]!.GetValue<bool>() ? ", act-order" : "")}; {q["quantized_modules"]} packed Linears, {ByteSize.Format((long)q["packed_weight_bytes"]!)} of codes"
                : $"{q["quant_method"]}: not supported ({q["error"]})" });
        if (r["num_parameters"] is not null)
        {
            rows.Add(new[] { "parameters", $"{r["num_parameters"]} ({r["num_parameters_exclude_embeddings"]} without embeddings)" });
            rows.Add(new[] { "footprint", $"{ByteSize.Format((long)r["memory_footprint_bytes"]!)} at {r["loaded_dtype"]}" });
            foreach (var b in (JsonArray)r["buffers"]!)
                rows.Add(new[] { "buffer", $"{b!["name"]} {b["dtype"]} {Shape(b["shape"])} persistent={b["persistent"]}" });
        }
        Tables.Print(new[] { "field", "value" }, rows);
        if (r["tensors"] is JsonArray ts)
            Tables.Print(new[] { "name", "dtype", "shape", "shard" },
                ts.Select(t => new[] { t!["name"]!.ToString(), t["dtype"]!.ToString(), Shape(t["shape"]), t["shard"]!.ToString() }));
    }
}
