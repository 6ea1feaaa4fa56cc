using ShardPipe.Checkpoints.SafeTensors;

namespace ShardPipe.Checkpoints;

/// <summary>Where one tensor lives: its shard file and header entry.</summary>
public sealed record TensorLocation(string Shard, TensorInfo Info)
{
    public string Name => Info.Name;
}

/// <summary>
/// The safetensors weights of one model folder, single-file or sharded, validated as a whole: every tensor
/// the index lists is in its shard, no tensor appears twice. Shards are opened lazily and can be closed to
/// release their mappings.
/// </summary>
public sealed class Checkpoint : IDisposable
{
    public string Folder { get; }
    public string? Variant { get; }
    /// <summary>The index file name, or null for a single-file checkpoint.</summary>
    public string? IndexFile { get; }
    public ShardIndex? Index { get; }
    /// <summary>Shard file names, sorted (or the single file).</summary>
    public IReadOnlyList<string> ShardFiles { get; }
    /// <summary>Every tensor in index order (file order for a single file).</summary>
    public IReadOnlyList<TensorLocation> Tensors { get; }

    private readonly Dictionary<string, TensorLocation> _byName;
    private readonly Dictionary<string, SafeTensorsFile> _open;

    private Checkpoint(string folder, string? variant, string? indexFile, ShardIndex? index, IReadOnlyList<string> shards,
        List<TensorLocation> tensors, Dictionary<string, SafeTensorsFile> open)
    {
        Folder = folder;
        Variant = variant;
        IndexFile = indexFile;
        Index = index;
        ShardFiles = shards;
        Tensors = tensors;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        _open = open;
    }

    public long TotalBytes => Tensors.Sum(t => t.Info.ByteLength);

    public bool Contains(string name) => _byName.ContainsKey(name);

    public TensorLocation Get(string name) => _byName.TryGetValue(name, out var loc)
        ? loc
        : throw new CheckpointFormatException(Path.Combine(Folder, IndexFile ?? ShardFiles[0]), name, "tensor is not in this checkpoint");

    /// <summary>The open shard file holding <paramref name="shard"/>; opened on first use.</summary>
    public SafeTensorsFile Shard(string shard)
    {
        lock (_open)
        {
            if (!_open.TryGetValue(shard, out var f))
            {
                f = SafeTensorsFile.Open(CheckpointFiles.Resolve(Folder, shard));
                _open[shard] = f;
            }
            return f;
        }
    }

    public void ReadInto(TensorLocation tensor, Span<byte> destination) => Shard(tensor.Shard).ReadInto(tensor.Info, destination);

    /// <summary>Closes an open shard (its handle and any mapping); it reopens on next use.</summary>
    public void Release(string shard)
    {
        lock (_open)
        {
            if (_open.Remove(shard, out var f)) f.Dispose();
        }
    }

    /// <summary>
    /// Opens the weights of <paramref name="folder"/> the way from_pretrained looks for them: the single file
    /// <c>model[.variant].safetensors</c>, else the index <c>model.safetensors.index[.variant].json</c>.
    /// </summary>
    public static Checkpoint Open(string folder, string? variant = null)
    {
        string single = CheckpointNames.SafeWeights(variant);
        string index = CheckpointNames.SafeIndex(variant);
        string singlePath = Path.Combine(folder, single);
        string indexPath = Path.Combine(folder, index);
        if (File.Exists(singlePath))
            return OpenSingle(folder, variant, single);
        if (File.Exists(indexPath))
            return OpenSharded(folder, variant, index);
        var tried = new List<string> { singlePath, indexPath };
        string msg = $"no safetensors weights in {folder}";
        if (variant is null && Directory.Exists(folder))
        {
            var variants = Directory.EnumerateFiles(folder, "model.safetensors.index.*.json").Select(Path.GetFileName)
                .Concat(Directory.EnumerateFiles(folder, "model.*.safetensors").Select(Path.GetFileName)).ToList();
            if (variants.Count > 0) msg += $" (found {string.Join(", ", variants)}: pass --variant)";
        }
        if (Directory.Exists(folder) && (File.Exists(Path.Combine(folder, "pytorch_model.bin")) ||
                                         File.Exists(Path.Combine(folder, "pytorch_model.bin.index.json"))))
            msg += " (only pytorch_model.bin found: pickle checkpoints are not read; convert to safetensors)";
        throw new CheckpointNotFoundException(msg, tried);
    }

    private static Checkpoint OpenSingle(string folder, string? variant, string single)
    {
        var file = SafeTensorsFile.Open(CheckpointFiles.Resolve(folder, single));
        var tensors = file.Tensors.OrderBy(t => t.Begin).Select(t => new TensorLocation(single, t)).ToList();
        return new Checkpoint(folder, variant, null, null, new[] { single }, tensors,
            new Dictionary<string, SafeTensorsFile> { [single] = file });
    }

    private static Checkpoint OpenSharded(string folder, string? variant, string indexName)
    {
        string indexPath = Path.Combine(folder, indexName);
        var index = ShardIndex.Load(CheckpointFiles.Resolve(folder, indexName));
        var open = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        try
        {
            foreach (var shard in index.ShardFiles)
            {
                string path = CheckpointFiles.Resolve(folder, shard);
                if (!File.Exists(path))
                    throw new CheckpointFormatException(indexPath, null, $"lists shard '{shard}', which does not exist in {folder}");
                open[shard] = SafeTensorsFile.Open(path);
            }
            // A tensor may live in one shard only, and must be in the shard the index names.
            var owner = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var (shard, file) in open)
                foreach (var t in file.Tensors)
                    if (!owner.TryAdd(t.Name, shard))
                        throw new CheckpointFormatException(Path.Combine(folder, shard), t.Name, $"tensor also appears in {owner[t.Name]}");
            var tensors = new List<TensorLocation>(index.WeightMap.Count);
            foreach (var (name, shard) in index.WeightMap)
            {
                if (!open[shard].Header.TryGet(name, out var info))
                    throw new CheckpointFormatException(Path.Combine(folder, shard), name, $"listed in {indexName} but missing from this shard");
                tensors.Add(new TensorLocation(shard, info));
            }
            return new Checkpoint(folder, variant, indexName, index, index.ShardFiles, tensors, open);
        }
        catch
        {
            foreach (var f in open.Values) f.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        lock (_open)
        {
            foreach (var f in _open.Values) f.Dispose();
            _open.Clear();
        }
    }
}
