using ShardPipe.Modeling.Core;
using ShardPipe.Checkpoints;

namespace ShardPipe.Modeling.Models;

/// <summary>
/// AutoModelForCausalLM: picks the class from <c>config.architectures</c>, falling back to <c>model_type</c>
/// (as <c>from_config</c> does). Other architectures can be registered.
/// </summary>
public static class AutoModel
{
    private static readonly object Gate = new();
    private static readonly Dictionary<string, Func<PretrainedConfig, CausalLMModel>> ByArchitecture = new(StringComparer.Ordinal)
    {
        ["LlamaForCausalLM"] = c => new LlamaForCausalLM(c, LlamaVariant.Llama),
        ["MistralForCausalLM"] = c => new LlamaForCausalLM(c, LlamaVariant.Mistral),
        ["Qwen2ForCausalLM"] = c => new LlamaForCausalLM(c, LlamaVariant.Qwen2),
        ["GPT2LMHeadModel"] = c => new Gpt2LMHeadModel(c),
        ["MixtralForCausalLM"] = MixtralFamily.Create,
        ["GemmaForCausalLM"] = c => new GemmaForCausalLM(c),
        ["PhiForCausalLM"] = c => new PhiForCausalLM(c),
    };
    private static readonly Dictionary<string, string> ByModelType = new(StringComparer.Ordinal)
    {
        ["llama"] = "LlamaForCausalLM",
        ["mistral"] = "MistralForCausalLM",
        ["qwen2"] = "Qwen2ForCausalLM",
        ["gpt2"] = "GPT2LMHeadModel",
        ["mixtral"] = "MixtralForCausalLM",
        ["gemma"] = "GemmaForCausalLM",
        ["phi"] = "PhiForCausalLM",
    };

    /// <summary>Registers another architecture (and optionally the model_type that falls back to it).</summary>
    public static void Register(string architecture, Func<PretrainedConfig, CausalLMModel> factory, string? modelType = null)
    {
        lock (Gate)
        {
            ByArchitecture[architecture] = factory;
            if (modelType is not null) ByModelType[modelType] = architecture;
        }
    }

    public static IReadOnlyCollection<string> Architectures
    {
        get { lock (Gate) return ByArchitecture.Keys.ToList(); }
    }

    /// <summary>Builds the model's module tree on the meta device: shapes only, no tensor memory.</summary>
    public static CausalLMModel FromConfig(PretrainedConfig config)
    {
        Func<PretrainedConfig, CausalLMModel>? factory = null;
        lock (Gate)
        {
            foreach (var arch in config.Architectures)
                if (ByArchitecture.TryGetValue(arch, out factory)) break;
            if (factory is null && config.ModelType is { } mt && ByModelType.TryGetValue(mt, out var archName))
                factory = ByArchitecture[archName];
        }
        if (factory is null)
            throw new UnsupportedException(
                $"{config.SourcePath ?? "config.json"}: unsupported architecture [{string.Join(", ", config.Architectures)}] / model_type '{config.ModelType}' " +
                $"(supported: {string.Join(", ", Architectures)})");
        var model = HeadPruning.CheckBuilt(factory(config));
        // A quantized checkpoint's Linears hold its packed tensors from the start (sizes, keys, slices); unknown schemes stop here.
        if (QuantizationConfig.From(config) is { } quantization) Quantization.QuantizedLinears.Install(model, quantization);
        return model;
    }
}
