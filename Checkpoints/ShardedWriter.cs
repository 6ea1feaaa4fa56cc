using ShardPipe.Checkpoints.SafeTensors;

namespace ShardPipe.Checkpoints;

/// <summary>
/// Saves a state dict as safetensors, one file or sharded, with Hugging Face's file names and its greedy
/// in-order sharding (<c>shard_checkpoint</c>): a new shard starts when the next tensor would tip the current
/// one over <c>max_shard_size</c>, unless the current shard is still empty (so an oversized tensor gets its own).
/// </summary>
public static class ShardedWriter
{
    public const string DefaultMaxShardSize = "5GB";

    /// <summary>Splits tensors in the given order into shards.</summary>
    public static List<List<TensorSource>> PlanShards(IReadOnlyList<TensorSource> tensors, long maxShardSize)
    {
        var shards = new List<List<TensorSource>> { new() };
        long current = 0;
        foreach (var t in tensors)
        {
            long size = t.ByteLength;
            if (current + size > maxShardSize && shards[^1].Count > 0)
            {
                shards.Add(new List<TensorSource>());
                current = 0;
            }
            shards[^1].Add(t);
            current += size;
        }
        return shards;
    }

    /// <summary>
    /// Writes <paramref name="tensors"/> (state-dict order) into <paramref name="folder"/>; returns the written file names.
    /// Removes stale shards of the same name pattern first, as save_pretrained does.
    /// </summary>
    public static IReadOnlyList<string> Save(string folder, IReadOnlyList<TensorSource> tensors, long maxShardSize, string? variant = null)
    {
        Directory.CreateDirectory(folder);
        var shards = PlanShards(tensors, maxShardSize);
        string single = CheckpointNames.SafeWeights(variant);
        RemoveStaleWeights(folder, variant);
        if (shards.Count == 1)
        {
            SafeTensorsWriter.Write(Path.Combine(folder, single), shards[0]);
            return new[] { single };
        }
        var names = new List<string>();
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        long total = 0;
        for (int i = 0; i < shards.Count; i++)
        {
            string name = CheckpointNames.Shard(variant, i + 1, shards.Count);
            SafeTensorsWriter.Write(Path.Combine(folder, name), shards[i]);
            foreach (var t in shards[i])
            {
                weightMap[t.Name] = name;
                total += t.ByteLength;
            }
            names.Add(name);
        }
        string indexName = CheckpointNames.SafeIndex(variant);
        ShardIndex.Write(Path.Combine(folder, indexName), total, weightMap);
        names.Add(indexName);
        return names;
    }

    private static void RemoveStaleWeights(string folder, string? variant)
    {
        string prefix = variant is null ? "model-" : $"model.{variant}-";
        foreach (var f in Directory.EnumerateFiles(folder, "*.safetensors"))
        {
            string n = Path.GetFileName(f);
            if (n.StartsWith(prefix, StringComparison.Ordinal) && n.Contains("-of-", StringComparison.Ordinal)) File.Delete(f);
        }
        foreach (var f in new[] { CheckpointNames.SafeWeights(variant), CheckpointNames.SafeIndex(variant) })
        {
            string p = Path.Combine(folder, f);
            if (File.Exists(p)) File.Delete(p);
        }
    }
}

/// <summary>Hugging Face's checkpoint file names, with <c>variant</c> inserted the way <c>_add_variant</c> does.</summary>
public static class CheckpointNames
{
    public const string Config = "config.json";
    public const string GenerationConfig = "generation_config.json";

    public static string SafeWeights(string? variant) => variant is null ? "model.safetensors" : $"model.{CheckVariant(variant)}.safetensors";

    public static string SafeIndex(string? variant) =>
        variant is null ? "model.safetensors.index.json" : $"model.safetensors.index.{CheckVariant(variant)}.json";

    /// <summary>
    /// A variant names files inside the model folder: a plain name of letters, digits, '_', '-' and '.' (not "." or
    /// ".."), so that no variant — from a user or a message — can reach outside it.
    /// </summary>
    public static string CheckVariant(string variant) =>
        variant.Length is > 0 and <= 64 && variant.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.') && variant.Trim('.').Length > 0 && !variant.Contains("..", StringComparison.Ordinal)
            ? variant
            : throw new InvalidInputException($"variant '{variant}' must be a plain name (letters, digits, '_', '-', '.'; at most 64 characters)");

    /// <summary>A subfolder stays inside its model folder: relative, no '..' segment.</summary>
    public static string CheckSubfolder(string subfolder) =>
        !Path.IsPathRooted(subfolder) && subfolder.Split('/', '\\').All(part => part is not ".." && part.Length <= 255)
            ? subfolder
            : throw new InvalidInputException($"subfolder '{subfolder}' must be a relative path inside the model folder");

    public static string Shard(string? variant, int index, int count) =>
        SafeWeights(variant).Replace(".safetensors", $"-{index:00000}-of-{count:00000}.safetensors", StringComparison.Ordinal);
}
