using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;

namespace ShardPipe.Modeling.Models;

/// <summary>
/// Counting utilities of PreTrainedModel. They read shapes only, so they answer for a model still on the
/// meta device (as <c>inspect</c> uses them) and for a loaded one alike.
/// </summary>
public static class ModelStatistics
{
    /// <summary><c>num_parameters()</c>: unique parameters (a tied weight once); optionally without nn.Embedding weights.</summary>
    public static long NumParameters(this HfModule model, bool onlyTrainable = false, bool excludeEmbeddings = false)
    {
        // Every parameter here is trainable (requires_grad); onlyTrainable changes nothing until frozen weights exist.
        _ = onlyTrainable;
        var embeddingKeys = excludeEmbeddings
            ? model.NamedModules().Where(m => m.Module is Embedding).Select(m => HfModule.Join(m.Path, "weight")).ToHashSet(StringComparer.Ordinal)
            : new HashSet<string>();
        return model.NamedParameters().Where(p => !embeddingKeys.Contains(p.Key)).Sum(p => p.Slot.ElementCount);
    }

    /// <summary>
    /// <c>get_memory_footprint(return_buffers)</c>: bytes of the unique parameters at <paramref name="dtype"/>, plus
    /// every buffer at its own dtype (fixed-dtype buffers such as inv_freq stay float32).
    /// </summary>
    public static long GetMemoryFootprint(this HfModule model, DType dtype, bool returnBuffers = true)
    {
        long bytes = model.NamedParameters().Sum(p => p.Slot.ElementCount * DTypes.Size(p.Slot.FixedDType ?? dtype));
        if (returnBuffers)
            bytes += model.NamedBuffers().Sum(b => b.Slot.ElementCount * DTypes.Size(b.Slot.FixedDType ?? dtype));
        return bytes;
    }

    /// <summary>
    /// Parameters one token reads in a decode step: every unique parameter but, in each sparse mixture-of-experts
    /// block, the experts its router does not choose (E − top_k of them). A dense model's is <see cref="NumParameters"/>.
    /// </summary>
    public static long ActiveParameters(this HfModule model)
    {
        long unread = model.NamedModules().Select(m => m.Module).OfType<MixtralSparseMoeBlock>()
            .Sum(b => (b.Experts.Count - b.TopK) * b.Experts[0].NamedParameters().Sum(p => p.Slot.ElementCount));
        return model.NumParameters() - unread;
    }

    /// <summary>The footprint of a loaded model at its own dtype.</summary>
    public static long GetMemoryFootprint(this CausalLMModel model, bool returnBuffers = true) =>
        model.GetMemoryFootprint(Core.TorchRuntime.ToDType(model.DType), returnBuffers);
}
