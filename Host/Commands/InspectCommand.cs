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
        var flops = new Option<string?>("--flops") { Description = "BxT: estimate_tokens and floating_point_ops (without and with embeddings) for input_ids of that shape" };
        var cmd = new Command("inspect", "Describe a checkpoint: architecture, config, dtypes, tensors, shards") { model, variant, revision, subfolder, tensors, dtype, flops, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            string folder = ModelLocator.Locate(parse.GetValue(model)!, new LocateOptions
            {
                Revision = parse.GetValue(revision),
                Subfolder = parse.GetValue(subfolder),
            });
            long[]? flopsShape = parse.GetValue(flops) is { } f ? ParseShape(f) : null;
            var result = Describe(folder, parse.GetValue(variant), parse.GetValue(tensors), parse.GetValue(dtype), flopsShape);
            if (parse.GetValue(json)) JsonOut.Print(result);
            else PrintText(result, folder);
            return 0;
        });
        return cmd;
    }

    /// <summary>The inspect JSON object (keys are a stable contract: other checks read them).</summary>
    public static JsonObject Describe(string folder, string? variant, bool withTensors, string? dtype = null, long[]? flopsShape = null)
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
        AddModelFigures(result, config, ckpt, dtype, flopsShape);
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
    private static void AddModelFigures(JsonObject result, PretrainedConfig? config, Checkpoint ckpt, string? dtype, long[]? flopsShape)
    {
        if (flopsShape is not null)
        {
            result["flops_input_shape"] = new JsonArray(flopsShape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray());
            result["estimate_tokens"] = result["floating_point_ops"] = result["floating_point_ops_with_embeddings"] = null;
        }
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
        if (flopsShape is not null)
        {
            var inputs = new Dictionary<string, long[]> { [ModelStatistics.MainInputName] = flopsShape };
            result["estimate_tokens"] = meta.EstimateTokens(inputs);
            result["floating_point_ops"] = meta.FloatingPointOps(inputs, excludeEmbeddings: true);
            result["floating_point_ops_with_embeddings"] = meta.FloatingPointOps(inputs, excludeEmbeddings: false);
        }
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

    /// <summary>"BxT" (e.g. 2x128): the shape of the input_ids batch that --flops counts.</summary>
    public static long[] ParseShape(string text)
    {
        var parts = text.Split('x');
        var dims = parts.Select(p => long.TryParse(p, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long d) && d > 0 ? d : -1).ToArray();
        if (parts.Length != 2 || dims.Any(d => d < 0))
            throw new InvalidInputException($"--flops '{text}': expected BxT, a batch size and a sequence length (positive integers), e.g. 2x128");
        return dims;
    }

    private static readonly string[] SummaryKeys =
    {
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
        "max_position_embeddings", "torch_dtype", "tie_word_embeddings", "n_embd", "n_layer", "n_head", "n_positions",
        "rope_theta", "sliding_window", "pruned_heads",
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
            if (r["floating_point_ops"] is not null)
            {
                rows.Add(new[] { "estimate_tokens", $"{r["estimate_tokens"]} (input_ids {r["flops_input_shape"]![0]}x{r["flops_input_shape"]![1]})" });
                rows.Add(new[] { "floating_point_ops", $"{r["floating_point_ops"]} ({r["floating_point_ops_with_embeddings"]} with embeddings)" });
            }
            foreach (var b in (JsonArray)r["buffers"]!)
                rows.Add(new[] { "buffer", $"{b!["name"]} {b["dtype"]} {Shape(b["shape"])} persistent={b["persistent"]}" });
        }
        Tables.Print(new[] { "field", "value" }, rows);
        if (r["tensors"] is JsonArray ts)
            Tables.Print(new[] { "name", "dtype", "shape", "shard" },
                ts.Select(t => new[] { t!["name"]!.ToString(), t["dtype"]!.ToString(), Shape(t["shape"]), t["shard"]!.ToString() }));
    }
}
