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

    /// <summary>HF's <c>main_input_name</c> of every causal LM.</summary>
    public const string MainInputName = "input_ids";

    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<HfModule, object> WarnedEstimate = new();

    /// <summary>
    /// <c>estimate_tokens(input_dict)</c>: the element count of the main input (<c>input_ids</c>), given by shape; without
    /// it 0, with a warning the first time for this model (as HF's <c>warnings_issued</c>).
    /// </summary>
    public static long EstimateTokens(this HfModule model, IReadOnlyDictionary<string, long[]> inputShapes,
        Microsoft.Extensions.Logging.ILogger? logger = null)
    {
        if (inputShapes.TryGetValue(MainInputName, out var shape))
        {
            if (shape.Any(d => d < 0)) throw new InvalidInputException($"{MainInputName}: shape [{string.Join(", ", shape)}] has a negative size");
            try { return shape.Aggregate(1L, (a, d) => checked(a * d)); }
            catch (OverflowException) { throw new InvalidInputException($"{MainInputName}: shape [{string.Join(", ", shape)}] has more than 2^63 elements"); }
        }
        if (WarnedEstimate.TryAdd(model, new object()))
            Microsoft.Extensions.Logging.LoggerExtensions.LogWarning(logger ?? (model as CausalLMModel)?.Logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance,
                "Could not estimate the number of tokens of the input, floating-point operations will not be computed");
        return 0;
    }

    /// <summary><c>estimate_tokens</c> of actual input tensors (their shapes).</summary>
    public static long EstimateTokens(this HfModule model, IReadOnlyDictionary<string, TorchSharp.torch.Tensor> inputs) =>
        model.EstimateTokens(Shapes(inputs));

    /// <summary><c>floating_point_ops</c> of actual input tensors (their shapes).</summary>
    public static long FloatingPointOps(this HfModule model, IReadOnlyDictionary<string, TorchSharp.torch.Tensor> inputs, bool excludeEmbeddings = true) =>
        model.FloatingPointOps(Shapes(inputs), excludeEmbeddings);

    private static Dictionary<string, long[]> Shapes(IReadOnlyDictionary<string, TorchSharp.torch.Tensor> inputs) =>
        inputs.ToDictionary(kv => kv.Key, kv => kv.Value.Shape(), StringComparer.Ordinal);

    /// <summary>
    /// <c>floating_point_ops(input_dict, exclude_embeddings)</c>: 6 × tokens × parameters, the forward and backward
    /// pass of a batch by the approximation of Kaplan et al. (2020), section 2.1; embeddings excluded by default, as in
    /// HF.
    /// </summary>
    public static long FloatingPointOps(this HfModule model, IReadOnlyDictionary<string, long[]> inputShapes, bool excludeEmbeddings = true,
        Microsoft.Extensions.Logging.ILogger? logger = null)
    {
        long tokens = model.EstimateTokens(inputShapes, logger);
        try { return checked(6 * tokens * model.NumParameters(excludeEmbeddings: excludeEmbeddings)); }
        catch (OverflowException) { throw new InvalidInputException($"floating_point_ops: 6 × {tokens} tokens × the parameters exceeds 2^63"); }
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
