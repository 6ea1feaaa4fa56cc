using TorchSharp;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Models;

/// <summary>Which attention kernel a model runs: PyTorch's fused <c>sdpa</c> (default) or the explicit <c>eager</c> path.</summary>
public enum AttnImplementation { Sdpa, Eager }

/// <summary>What every decoder layer of one forward pass shares: positions, mask, rotary tables, the cache.</summary>
public sealed class LayerInputs : IDisposable
{
    public required Tensor PositionIds { get; init; }
    public Tensor? Mask { get; init; }
    public bool IsPlainCausal { get; init; }
    public Tensor? Cos { get; init; }
    public Tensor? Sin { get; init; }
    public KvCache? Cache { get; init; }

    public void Dispose()
    {
        Mask?.Dispose();
        Cos?.Dispose();
        Sin?.Dispose();
    }
}

/// <summary>
/// A decoder-only causal LM as a pipeline of stages: embed → decoder layers → final norm and head. A whole
/// forward pass runs them in order; a pipeline worker runs only its slice.
/// </summary>
public abstract class CausalLMModel : HfModule
{
    public PretrainedConfig Config { get; }
    public AttnImplementation Attention { get; set; } = AttnImplementation.Sdpa;

    protected CausalLMModel(PretrainedConfig config) => Config = config;

    /// <summary>HF's <c>base_model_prefix</c> ("model", "transformer").</summary>
    public abstract string BaseModelPrefix { get; }
    /// <summary>HF's <c>_no_split_modules</c>: block classes that must stay on one device.</summary>
    public abstract IReadOnlyList<string> NoSplitModules { get; }
    public abstract int NumLayers { get; }
    public abstract long VocabSize { get; }
    /// <summary>Module paths of the decoder blocks, in order (e.g. <c>model.layers.3</c>).</summary>
    public abstract string LayerPath(int index);
    /// <summary>Module path of the input embedding (the weight tied to the head).</summary>
    public abstract string InputEmbeddingsPath { get; }
    public abstract string OutputEmbeddingsPath { get; }
    public abstract Embedding InputEmbeddings { get; }
    public abstract Linear OutputEmbeddings { get; }
    public bool TieWordEmbeddings => Config.GetBool("tie_word_embeddings", true);
    /// <summary>generation_config.json as loaded (or derived from the config): bos/eos/pad ids.</summary>
    public System.Text.Json.Nodes.JsonObject GenerationConfig { get; set; } = new();

    /// <summary>Weights kept on disk until their module runs (device_map "disk"); null when nothing is offloaded.</summary>
    public Loading.DiskOffload? Offload { get; internal set; }

    /// <summary>The token (and position) embeddings: (B, T) ids → (B, T, H).</summary>
    public Tensor Embed(Tensor inputIds, Tensor positionIds)
    {
        using var weights = Offload?.Use(InputEmbeddingsPath, LayerPath(0));
        return EmbedCore(inputIds, positionIds);
    }

    /// <summary>Decoder block <paramref name="index"/> for one request: hidden (B, T, H) → (B, T, H).</summary>
    public Tensor Layer(int index, Tensor hidden, LayerInputs inputs)
    {
        long b = hidden.Shape()[0], t = hidden.Shape()[1];
        using var flat = hidden.reshape(b * t, hidden.Shape()[2]);
        using var y = Layer(index, flat, RaggedBatch.Single(b, t, inputs));
        return y.view(b, t, y.Shape()[1]);
    }

    /// <summary>
    /// Decoder block <paramref name="index"/> for the requests of a merged step: flat (N, H) → (N, H). An offloaded
    /// block's weights are read in for the call (the next one prefetched).
    /// </summary>
    public Tensor Layer(int index, Tensor flat, RaggedBatch batch)
    {
        using var weights = Offload?.Use(LayerPath(index), index + 1 < NumLayers ? LayerPath(index + 1) : FinalNormPath);
        return LayerCore(index, flat, batch);
    }

    /// <summary>The final norm: hidden (B, T, H) → hidden.</summary>
    public Tensor FinalNorm(Tensor hidden)
    {
        using var weights = Offload?.Use(FinalNormPath, OutputEmbeddingsPath);
        return FinalNormCore(hidden);
    }

    protected abstract Tensor EmbedCore(Tensor inputIds, Tensor positionIds);
    protected abstract Tensor LayerCore(int index, Tensor flat, RaggedBatch batch);
    protected abstract Tensor FinalNormCore(Tensor hidden);
    /// <summary>Mask and rotary tables for one pass, on <paramref name="device"/>.</summary>
    public abstract LayerInputs PrepareLayerInputs(Tensor positionIds, Tensor? attentionMask, long pastLength, long queryLength,
        ScalarType dtype, Device device, KvCache? cache, int firstLayer);
    /// <summary>The sliding window a row's keys are masked to (Mistral, Qwen2, Mixtral), or null for none.</summary>
    public virtual long? SlidingWindow => null;
    /// <summary>The LM head projection: normed hidden (B, T, H) → logits (B, T, V).</summary>
    public Tensor Project(Tensor hidden)
    {
        using var weights = Offload?.Use(OutputEmbeddingsPath, InputEmbeddingsPath);
        return OutputEmbeddings.Forward(hidden);
    }
    /// <summary>Final norm and LM head: hidden (B, T, H) → logits (B, T, V).</summary>
    public Tensor Head(Tensor hidden)
    {
        using var scope = NewDisposeScope();
        return Project(FinalNorm(hidden)).MoveToOuterDisposeScope();
    }
    /// <summary>Module path of the final norm (a pipeline hop may hold it without the head).</summary>
    public abstract string FinalNormPath { get; }

    /// <summary>hf_device_map: module prefix → device, as loaded.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> HfDeviceMap { get; internal set; } = new List<KeyValuePair<string, string>> { new("", "cpu") };
    /// <summary>The folder it was loaded from, if any.</summary>
    public string? SourceFolder { get; internal set; }

    /// <summary>The dtype the model's floating parameters were materialised in.</summary>
    public ScalarType DType { get; internal set; } = ScalarType.Float32;

    /// <summary>Devices of the layer stages when the model is split inside one process (null = all on <see cref="HfModule.Device"/>).</summary>
    internal Func<int, Device>? LayerDevice { get; set; }
    internal Device EmbedDevice { get; set; } = CPU;
    internal Device HeadDevice { get; set; } = CPU;

    /// <summary>Where warnings go (from_pretrained passes its logger).</summary>
    public Microsoft.Extensions.Logging.ILogger? Logger { get; set; }
    private bool _warnedPadding;

    /// <summary>HF's one-time warning: padding ids at a row's edge but no attention mask given.</summary>
    public bool WarnIfPaddingAndNoAttentionMask(Tensor inputIds, Tensor? attentionMask)
    {
        if (_warnedPadding || attentionMask is not null || Config.GetLongOrNull("pad_token_id") is not { } pad || inputIds.Shape()[1] == 0) return false;
        using var scope = NewDisposeScope();
        bool edge = inputIds.select(1, 0).eq(pad).any().item<bool>() || inputIds.select(1, inputIds.Shape()[1] - 1).eq(pad).any().item<bool>();
        if (!edge) return false;
        _warnedPadding = true;
        Microsoft.Extensions.Logging.LoggerExtensions.LogWarning(Logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance,
            "We strongly recommend passing in an `attention_mask` since your input_ids may be padded (pad_token_id {Pad} at a row's edge).", pad);
        return true;
    }

    /// <summary>Frees every tensor (the model returns to the meta device).</summary>
    public void Release()
    {
        Offload?.Dispose();
        Offload = null;
        foreach (var (_, slot) in NamedTensors()) slot.Release();
    }

    /// <summary>
    /// A full forward pass. Without <paramref name="positionIds"/> every row uses positions past..past+T-1 (HF's
    /// forward default, even for left-padded rows). Returns logits (B, T, V) in float32 on the CPU.
    /// </summary>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null,
        bool lastOnly = false)
    {
        using var hook = Hook();
        // The base model (embeddings → final norm) is one module of its own for the memory hooks, as in HF.
        var baseHook = MemoryHook is null ? default : Children.First(c => c.Name == BaseModelPrefix).Module.Hook();
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        long batch = inputIds.Shape()[0], t = inputIds.Shape()[1];
        WarnIfPaddingAndNoAttentionMask(inputIds, attentionMask);
        long past = cache?.SeenTokens(0) ?? 0;
        var positions = positionIds ?? arange(past, past + t, dtype: ScalarType.Int64).unsqueeze(0).expand(batch, t);
        var hidden = Embed(inputIds.to(EmbedDevice), positions.to(EmbedDevice));
        var inputsByDevice = new Dictionary<string, (LayerInputs Inputs, RaggedBatch Batch)>();
        long width = hidden.Shape()[2];
        var flat = hidden.reshape(batch * t, width); // the blocks' flat (N, H) rows, and one batch per device for every block
        try
        {
            for (int i = 0; i < NumLayers; i++)
            {
                var device = LayerDevice?.Invoke(i) ?? EmbedDevice;
                string key = device.ToString();
                if (!inputsByDevice.TryGetValue(key, out var per))
                {
                    var li = PrepareLayerInputs(positions.to(device), attentionMask?.to(device), past, t, hidden.dtype, device, cache, i);
                    per = (li, RaggedBatch.Single(batch, t, li));
                    inputsByDevice[key] = per;
                }
                flat = Layer(i, flat.to(device), per.Batch);
            }
        }
        finally
        {
            foreach (var per in inputsByDevice.Values) per.Inputs.Dispose();
        }
        hidden = flat.view(batch, t, width);
        if (lastOnly) hidden = hidden.narrow(1, t - 1, 1);
        hidden = FinalNorm(hidden.to(HeadDevice));
        baseHook.Dispose();
        var logits = Project(hidden).to(ScalarType.Float32).cpu();
        return logits.MoveToOuterDisposeScope();
    }
}
