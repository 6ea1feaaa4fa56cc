using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Models;

/// <summary>A model whose base model can prune attention heads (transformers' <c>_prune_heads</c>): GPT-2.</summary>
public interface IPrunableHeads
{
    /// <summary>Heads per layer before any pruning (<c>n_head</c>).</summary>
    int ConfiguredHeads { get; }
    /// <summary>The base model's <c>_prune_heads</c> for one layer: heads already pruned there are skipped.</summary>
    void PruneLayerHeads(int layer, IReadOnlyCollection<int> heads);
}

/// <summary>
/// <c>prune_heads</c> and <c>config.pruned_heads</c>, as transformers 4.38 does them: the config records the union of
/// every call's heads per layer; a model built from a config with <c>pruned_heads</c> (from_pretrained, the planner's
/// meta model, a pipeline stage) has those heads pruned before any weight is loaded, so its tensors take the pruned
/// shapes. Families whose base model has no <c>_prune_heads</c> (Llama, Mistral, Qwen2 …) refuse.
/// </summary>
public static class HeadPruning
{
    public const string ConfigKey = "pruned_heads";

    /// <summary>
    /// <c>model.prune_heads(heads_to_prune)</c>: layer → heads to remove (head indices as in the unpruned model). Every
    /// layer and head is checked before anything changes; then config.pruned_heads takes the union and each layer's
    /// attention drops the heads it still has (repeated calls accumulate; a head pruned before is skipped).
    /// </summary>
    public static void PruneHeads(this CausalLMModel model, IReadOnlyDictionary<int, int[]> headsToPrune)
    {
        var prunable = Prunable(model);
        if (model.Offload is not null)
            throw new UnsupportedException($"prune_heads on {model.ClassName}: its weights are offloaded to disk (mapped files cannot be narrowed in place); load it without disk offload");
        foreach (var (layer, heads) in headsToPrune)
            Validate(layer, heads, model.NumLayers, prunable.ConfiguredHeads, "heads_to_prune");
        var recorded = Read(model.Config, model.NumLayers, prunable.ConfiguredHeads);
        foreach (var (layer, heads) in headsToPrune)
            recorded[layer] = recorded.TryGetValue(layer, out var before) ? before.Union(heads).ToArray() : heads.Distinct().ToArray();
        Write(model.Config, recorded);
        foreach (var (layer, heads) in headsToPrune)
            prunable.PruneLayerHeads(layer, heads);
    }

    /// <summary>Refuses a config with <c>pruned_heads</c> for a model that cannot prune (transformers fails to build it too).</summary>
    public static CausalLMModel CheckBuilt(CausalLMModel model)
    {
        // Any entry, even an empty list, makes init_weights call prune_heads, which fails without _prune_heads.
        if (model is not IPrunableHeads && model.Config.GetObject(ConfigKey) is { Count: > 0 })
            throw new UnsupportedException($"{model.Config.SourcePath ?? "config.json"}: {ConfigKey} is set, but {model.ClassName} has no head pruning (transformers prunes heads only where the base model defines _prune_heads, e.g. GPT-2)");
        return model;
    }

    private static IPrunableHeads Prunable(CausalLMModel model) => model as IPrunableHeads
        ?? throw new UnsupportedException($"prune_heads: {model.ClassName} has no head pruning (transformers 4.38 defines _prune_heads for GPT-2 among the supported families, not for {model.ClassName})");

    /// <summary>config.pruned_heads as layer → heads (keys are strings in config.json), checked against the model's shape.</summary>
    public static SortedDictionary<int, int[]> Read(PretrainedConfig config, int layers, int heads)
    {
        string file = config.SourcePath ?? CheckpointNames.Config;
        var result = new SortedDictionary<int, int[]>();
        if (!config.Values.TryGetPropertyValue(ConfigKey, out var node) || node is null) return result;
        if (node is not JsonObject map)
            throw new CheckpointFormatException(file, null, $"{ConfigKey} must be an object of layer → list of heads, found {node.ToJsonString()}");
        foreach (var (key, value) in map)
        {
            if (!int.TryParse(key, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int layer))
                throw new CheckpointFormatException(file, null, $"{ConfigKey}: layer '{key}' is not a non-negative integer");
            if (value is not JsonArray list)
                throw new CheckpointFormatException(file, null, $"{ConfigKey}['{key}'] must be a list of head indices, found {value?.ToJsonString() ?? "null"}");
            var ids = list.Select(h => h is JsonValue v && v.TryGetValue(out int i) ? i
                : throw new CheckpointFormatException(file, null, $"{ConfigKey}['{key}']: head {h?.ToJsonString() ?? "null"} is not an integer")).ToArray();
            try { Validate(layer, ids, layers, heads, ConfigKey); }
            catch (InvalidInputException e) { throw new CheckpointFormatException(file, null, e.Message); }
            result[layer] = ids.Distinct().ToArray();
        }
        return result;
    }

    /// <summary>Writes config.pruned_heads as save_pretrained does: string keys, each layer's heads once (ascending).</summary>
    private static void Write(PretrainedConfig config, SortedDictionary<int, int[]> pruned) =>
        config.Set(ConfigKey, new JsonObject(pruned.Select(kv => KeyValuePair.Create(
            kv.Key.ToString(System.Globalization.CultureInfo.InvariantCulture),
            (JsonNode?)new JsonArray(kv.Value.Distinct().Order().Select(h => (JsonNode)JsonValue.Create(h)).ToArray())))));

    private static void Validate(int layer, IReadOnlyCollection<int> heads, int layers, int headCount, string what)
    {
        if (layer < 0 || layer >= layers)
            throw new InvalidInputException($"{what}: layer {layer} does not exist (the model has {layers} layers)");
        foreach (int h in heads)
            if (h < 0 || h >= headCount)
                throw new InvalidInputException($"{what}: head {h} of layer {layer} does not exist (the model has {headCount} heads per layer)");
    }

    /// <summary>
    /// <c>find_pruneable_heads_and_indices</c>: of <paramref name="heads"/> (indices in the unpruned layer), those not
    /// pruned yet, and the indices (into the current <paramref name="currentHeads"/> × <paramref name="headSize"/>
    /// features) of the features that stay.
    /// </summary>
    public static (IReadOnlySet<int> Heads, long[] Keep) FindPruneableHeadsAndIndices(IEnumerable<int> heads, int currentHeads, long headSize,
        IReadOnlySet<int> alreadyPruned)
    {
        var fresh = heads.Where(h => !alreadyPruned.Contains(h)).ToHashSet();
        var dropped = new bool[currentHeads];
        // A head's row in the current layer: its original index less the pruned heads before it.
        foreach (int h in fresh) dropped[h - alreadyPruned.Count(p => p < h)] = true;
        var keep = new List<long>();
        for (int row = 0; row < currentHeads; row++)
            if (!dropped[row])
                for (long f = 0; f < headSize; f++) keep.Add(row * headSize + f);
        return (fresh, keep.ToArray());
    }

    /// <summary>
    /// <c>prune_conv1d_layer(layer, index, dim)</c>: keeps the features <paramref name="index"/> of the weight [in, out]
    /// along <paramref name="dim"/> (0 = inputs: the bias stays whole; 1 = outputs: the bias is narrowed too). A layer
    /// still on the meta device takes the new shapes only. The layer keeps its dtype and device.
    /// </summary>
    public static void PruneConv1DLayer(Conv1D layer, long[] index, int dim)
    {
        if (dim is not (0 or 1)) throw new InvalidInputException($"prune_conv1d_layer: dim must be 0 or 1, not {dim}");
        var weightShape = layer.Weight.Shape.ToArray();
        weightShape[dim] = index.Length;
        long[] biasShape = dim == 0 ? layer.Bias.Shape : new long[] { index.Length };
        if (!layer.Weight.IsMaterialised)
        {
            layer.Weight.Shape = weightShape;
            layer.Bias.Shape = biasShape;
            return;
        }
        using var noGrad = torch.no_grad();
        using var idx = tensor(index, ScalarType.Int64, layer.Weight.Tensor.device);
        var weight = layer.Weight.Tensor.index_select(dim, idx).contiguous();
        var bias = dim == 0 ? layer.Bias.Tensor.clone() : layer.Bias.Tensor.index_select(0, idx).contiguous();
        layer.Weight.Set(weight.DetachFromDisposeScope());
        layer.Bias.Set(bias.DetachFromDisposeScope());
    }
}
