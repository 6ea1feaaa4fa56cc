using System.CommandLine;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Loading;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe save</c>: from_pretrained then save_pretrained (re-shard, re-type, add a variant).</summary>
public static class SaveCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var revision = CommonOptions.Revision();
        var subfolder = CommonOptions.Subfolder();
        var variant = CommonOptions.Variant();
        var outDir = new Option<string>("--out") { Description = "Folder to write", Required = true };
        var maxShard = new Option<string>("--max-shard-size") { Description = "Largest shard (\"5GB\", \"200MB\", bytes)", DefaultValueFactory = _ => ShardedWriter.DefaultMaxShardSize };
        var dtype = new Option<string?>("--dtype") { Description = "Cast floating weights (default, or auto: keep the stored dtype)" };
        var json = CommonOptions.Json();
        var quantize = CommonOptions.Quantize();
        var groupSize = CommonOptions.QuantizeGroupSize();
        var quantizeHead = CommonOptions.QuantizeHead();
        var cmd = new Command("save", "Load a model and save it again with save_pretrained's layout (quantized: compressed-tensors pack-quantized)") { model, revision, subfolder, variant, outDir, maxShard, dtype, quantize, groupSize, quantizeHead, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            string folder = ModelLocator.Locate(parse.GetValue(model)!, new LocateOptions { Revision = parse.GetValue(revision), Subfolder = parse.GetValue(subfolder) });
            string? v = parse.GetValue(variant);
            string? castTo = parse.GetValue(dtype) is "auto" ? null : parse.GetValue(dtype); // auto keeps the stored dtype, like torch_dtype="auto"
            // --variant names the variant written; it is read too where the source has it.
            string? readVariant = v is not null && HasVariant(folder, v) ? v : null;
            string stored;
            using (var ckpt = Checkpoint.Open(folder, readVariant))
                stored = PretrainedConfig.FromFolder(folder).GetObject("quantization_config") is not null
                    ? "auto" // a quantized checkpoint's first floating tensor may be a scale: its torch_dtype says what the model is
                    : DTypes.TorchName(ckpt.Tensors.Select(t => t.Info.DType).FirstOrDefault(DTypes.IsFloating, DType.F32));
            var loaded = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions
            {
                Variant = readVariant, DType = castTo ?? stored, Logger = log,
                Quantize = parse.GetValue(quantize), QuantizeGroupSize = parse.GetValue(groupSize), QuantizeHead = parse.GetValue(quantizeHead),
            });
            var files = PreTrainedModel.SavePretrained(loaded, parse.GetValue(outDir)!, new SaveOptions
            {
                MaxShardSize = parse.GetValue(maxShard)!,
                Variant = v,
                DType = castTo,
            });
            log.LogInformation("saved {Count} files to {Out}", files.Count, parse.GetValue(outDir));
            if (parse.GetValue(json))
                JsonOut.Print(new JsonObject { ["out"] = parse.GetValue(outDir), ["files"] = new JsonArray(files.Select(f => (JsonNode)JsonValue.Create(f)!).ToArray()) });
            else foreach (var f in files) Console.WriteLine(f);
            return 0;
        });
        return cmd;
    }

    private static bool HasVariant(string folder, string variant) =>
        File.Exists(Path.Combine(folder, CheckpointNames.SafeWeights(variant))) || File.Exists(Path.Combine(folder, CheckpointNames.SafeIndex(variant)));
}
