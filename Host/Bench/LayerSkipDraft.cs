using System.Text.RegularExpressions;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;

namespace ShardPipe.Host.Bench;

/// <summary>
/// A draft model cut from its target for <c>bench decode --speculate --draft-model layers:L</c>: the target's
/// embeddings, its first L decoder layers, final norm and head (LayerSkip-style self-speculation: the same vocabulary
/// and tokenizer by construction, and on random weights a draft that agrees with its target far more often than an
/// unrelated one). Written once per target and L beside the benchmark's other generated checkpoints.
/// </summary>
public static partial class LayerSkipDraft
{
    [GeneratedRegex(@"^model\.layers\.(\d+)\.")]
    private static partial Regex LayerKey();

    public static string Write(string target, int layers, string folder)
    {
        var config = PretrainedConfig.FromFolder(target);
        long total = config.GetLong("num_hidden_layers");
        if (layers < 1 || layers >= total) throw new InvalidInputException($"--draft-model layers:{layers}: the target has {total} layers; take 1..{total - 1}");
        string stamp = Path.Combine(folder, ".source");
        string wanted = $"{Path.GetFullPath(target)} {layers}";
        if (File.Exists(stamp) && File.ReadAllText(stamp) == wanted) return folder;
        if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        Directory.CreateDirectory(folder);
        using var checkpoint = Checkpoint.Open(target);
        var sources = checkpoint.Tensors
            .Where(t => LayerKey().Match(t.Name) is not { Success: true } m || int.Parse(m.Groups[1].Value) < layers)
            .Select(t => new TensorSource(t.Name, t.Info.DType, t.Info.Shape, dst => checkpoint.ReadInto(t, dst)))
            .ToList();
        var cut = config.Clone();
        cut.Values["num_hidden_layers"] = layers;
        cut.Save(Path.Combine(folder, CheckpointNames.Config));
        foreach (var name in new[] { CheckpointNames.GenerationConfig, "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json" })
            if (File.Exists(Path.Combine(target, name))) File.Copy(Path.Combine(target, name), Path.Combine(folder, name));
        ShardedWriter.Save(folder, sources, ByteSize.Parse("2GB"));
        File.WriteAllText(stamp, wanted);
        return folder;
    }
}
