using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Models;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Loading;

/// <summary>The arguments of <c>from_pretrained</c> that ShardPipe supports, with HF's names and defaults.</summary>
public sealed record FromPretrainedOptions
{
    /// <summary>Use this config instead of the folder's config.json.</summary>
    public PretrainedConfig? Config { get; init; }
    /// <summary>Config keys to override (HF's config kwargs).</summary>
    public IReadOnlyDictionary<string, JsonNode?>? ConfigOverrides { get; init; }
    /// <summary>Load from these tensors instead of the checkpoint files.</summary>
    public IReadOnlyDictionary<string, Tensor>? StateDict { get; init; }
    /// <summary>"float32", "float16", "bfloat16", "auto" (config torch_dtype, else the first floating tensor's); default float32.</summary>
    public string? DType { get; init; }
    /// <summary>"auto", "balanced", "balanced_low_0", "sequential", "cpu", "cuda:N", an integer, or a JSON object of module prefix → device. Null = cpu.</summary>
    public string? DeviceMap { get; init; }
    public IReadOnlyDictionary<string, string>? DeviceMapDict { get; init; }
    /// <summary>Budgets for the planning strategies, e.g. "0=10GiB,cpu=30GiB"; default: what each device has free.</summary>
    public string? MaxMemory { get; init; }
    /// <summary>Classes kept whole by the planning strategies; default the model's <c>_no_split_modules</c>.</summary>
    public IReadOnlyList<string>? NoSplitModuleClasses { get; init; }
    public string? Variant { get; init; }
    public string? Revision { get; init; }
    public string? Subfolder { get; init; }
    public string? CacheDir { get; init; }
    /// <summary>HF default true. False selects pytorch_model.bin, which is not read: a typed error (naming the folder) either way.</summary>
    public bool UseSafetensors { get; init; } = true;
    public bool IgnoreMismatchedSizes { get; init; }
    /// <summary>Fail on missing or unexpected keys instead of warning (HF itself is lenient).</summary>
    public bool Strict { get; init; }
    public AttnImplementation AttnImplementation { get; init; } = AttnImplementation.Sdpa;
    public ILogger? Logger { get; init; }
    /// <summary>Materialise only the state-dict keys this accepts (a pipeline stage's slice); the rest stay on the meta device.</summary>
    public Func<string, bool>? IncludeKey { get; init; }
    /// <summary>Fetch tensors from here instead of local files (a node streaming its slice from another node's shard reader).</summary>
    public TensorFetcher? Fetcher { get; init; }
    /// <summary>Called as tensors are materialised: (tensors done, tensors total, bytes done, bytes total).</summary>
    public Action<int, int, long, long>? Progress { get; init; }
    /// <summary>
    /// Where weights a disk-mapped module needs at another dtype than stored are written once (HF's offload_folder);
    /// weights stored at their target dtype are read from the checkpoint's own shards and need no folder.
    /// </summary>
    public string? OffloadFolder { get; init; }
    /// <summary>
    /// HF's offload_state_dict. Accepted: the loader already never holds more than one tensor beyond the modules'
    /// own memory (each tensor is read straight into its place), which is what the option guarantees in HF.
    /// </summary>
    public bool OffloadStateDict { get; init; }
    /// <summary>HF's offload_buffers: buffers of disk-mapped modules are offloaded too. Accepted; the supported models' buffers are all non-persistent (computed), so they stay in memory.</summary>
    public bool OffloadBuffers { get; init; }
    /// <summary>
    /// Bring in the next disk-offloaded module while the current one runs. Null (the default) = when the machine has a
    /// core beyond libtorch's compute threads (<see cref="DiskOffload.PrefetchByDefault"/>): on a machine whose every
    /// core computes, the prefetching thread only slows the compute down and holds a second module resident.
    /// </summary>
    public bool? OffloadPrefetch { get; init; }
    /// <summary>
    /// A model of the same checkpoint loaded before (a pipeline stage's previous slice): every tensor the new model
    /// needs that it holds — same key, shape, dtype and device — is taken over instead of read again (only what moved
    /// is loaded). The rest of it is left as it was; the caller releases it.
    /// </summary>
    public CausalLMModel? Reuse { get; init; }
    /// <summary>Quantize on load: "int8" or "int4" (round-to-nearest, symmetric, every Linear but the head); null keeps floats.</summary>
    public string? Quantize { get; init; }
    /// <summary>Inputs per scale group for <see cref="Quantize"/>; −1 = per output channel.</summary>
    public int QuantizeGroupSize { get; init; } = 128;
    /// <summary>With <see cref="Quantize"/>, the output head too when untied (as llama.cpp does; Hugging Face's schemes keep it in float).</summary>
    public bool QuantizeHead { get; init; }
    /// <summary>Reader threads used to materialise tensors.</summary>
    public int Threads { get; init; } = Math.Max(1, Math.Min(Environment.ProcessorCount, 4));
    /// <summary>HF's load_in_8bit / load_in_4bit (quantize the weights as they load) and quantization_config (a
    /// BitsAndBytesConfig-style dict, e.g. <c>{"load_in_8bit": true}</c>). All go through <see cref="QuantizeOnLoad"/>.</summary>
    public bool LoadIn8Bit { get; init; }
    public bool LoadIn4Bit { get; init; }
    public JsonObject? QuantizationConfig { get; init; }
}

/// <summary>
/// The one place where from_pretrained's quantization arguments become a quantize-on-load request, checked as
/// transformers 4.38 checks them: load_in_8bit/load_in_4bit together with quantization_config, or both bit widths at
/// once, are invalid; a quantization_config needs load_in_8bit/load_in_4bit or a <c>quant_method</c>. Valid requests
/// become quantize-on-load (<see cref="Map"/>).
/// </summary>
public static class QuantizeOnLoad
{
    /// <summary>
    /// The options to load with: unchanged when nothing is asked; with <see cref="FromPretrainedOptions.Quantize"/> set
    /// when load_in_8bit / load_in_4bit (or a bitsandbytes-style quantization_config) asks for it. They map onto
    /// ShardPipe's round-to-nearest weight-only quantization — 8-bit per output channel (LLM.int8's row-wise absmax
    /// scales, without its fp16 outlier columns), 4-bit in groups of 64 (bitsandbytes' block size; integer codes, not
    /// NF4/FP4) — so outputs are close to, not equal to, bitsandbytes'. Other quant_methods in quantization_config
    /// (GPTQ, AWQ calibration) are refused naming the option.
    /// </summary>
    public static FromPretrainedOptions Map(FromPretrainedOptions o)
    {
        if (Requested(o) is not { } scheme) return o;
        string option = o.QuantizationConfig is not null ? "quantization_config" : o.LoadIn8Bit ? "load_in_8bit" : "load_in_4bit";
        if (scheme is not ("int8" or "int4"))
            throw new UnsupportedException($"{option}: quantizing with {scheme} on load is not available (it needs calibration data); load a checkpoint {scheme} already wrote, or use load_in_8bit / load_in_4bit");
        if (o.Quantize is { } already && already != scheme)
            throw new InvalidInputException($"{option} asks for {scheme}, but Quantize is {already}: give one");
        return o with { Quantize = scheme, QuantizeGroupSize = scheme == "int8" ? -1 : 64 };
    }

    /// <summary>Null when nothing is asked; otherwise the scheme asked for ("int8", "int4", or quantization_config's quant_method), checked as transformers checks the arguments.</summary>
    public static string? Requested(FromPretrainedOptions o)
    {
        if ((o.LoadIn8Bit || o.LoadIn4Bit) && o.QuantizationConfig is not null)
            throw new InvalidInputException("You can't pass `load_in_4bit`or `load_in_8bit` as a kwarg when passing `quantization_config` argument at the same time.");
        bool eight = o.LoadIn8Bit || Flag(o.QuantizationConfig, "load_in_8bit"), four = o.LoadIn4Bit || Flag(o.QuantizationConfig, "load_in_4bit");
        if (eight && four)
            throw new InvalidInputException("load_in_4bit and load_in_8bit are both True, but only one can be used at the same time");
        if (o.QuantizationConfig is null && !eight && !four) return null;
        return eight ? "int8" : four ? "int4"
            : o.QuantizationConfig!["quant_method"] is JsonValue m && m.TryGetValue(out string? method) ? method
            : throw new InvalidInputException("quantization_config has no `quant_method` (and neither load_in_8bit nor load_in_4bit)");
    }

    private static bool Flag(JsonObject? config, string key) => config?[key] switch
    {
        null => false,
        JsonValue v when v.TryGetValue(out bool b) => b,
        var n => throw new InvalidInputException($"quantization_config.{key} must be true or false, not {n.ToJsonString()}"),
    };
}

/// <summary>What <c>output_loading_info=True</c> returns.</summary>
public sealed record LoadingInfo(
    IReadOnlyList<string> MissingKeys,
    IReadOnlyList<string> UnexpectedKeys,
    IReadOnlyList<(string Key, long[] CheckpointShape, long[] ModelShape)> MismatchedKeys,
    IReadOnlyList<string> ErrorMsgs);

/// <summary>Fills <paramref name="destination"/> (exactly the tensor's size) with the bytes of tensor <paramref name="name"/>; blocks.</summary>
public delegate void FetchInto(string name, Span<byte> destination);

/// <summary>Tensors available from elsewhere (e.g. streamed over the cluster): their index, and a blocking fetch of one tensor's bytes straight into its storage.</summary>
public sealed record TensorFetcher(IReadOnlyList<(string Name, DType DType, long[] Shape)> Index, FetchInto Fetch);
