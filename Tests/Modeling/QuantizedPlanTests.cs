using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Modeling.Quantization;
using ShardPipe.Placement;

namespace ShardPipe.Tests.Modeling;

/// <summary>Planning counts what a quantized model holds: a 4-bit 70B Llama fits a CPU budget its bf16 form overflows to disk.</summary>
public class QuantizedPlanTests
{
    private static PretrainedConfig Llama70B(JsonObject? quantization)
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"), ["model_type"] = "llama", ["hidden_size"] = 8192,
            ["intermediate_size"] = 28672, ["num_hidden_layers"] = 80, ["num_attention_heads"] = 64, ["num_key_value_heads"] = 8,
            ["vocab_size"] = 32000, ["max_position_embeddings"] = 4096, ["rms_norm_eps"] = 1e-5, ["tie_word_embeddings"] = false,
        };
        if (quantization is not null) o["quantization_config"] = quantization;
        return new PretrainedConfig(o);
    }

    private static PlanResult Plan(CausalLMModel model) => DevicePlanner.Plan(new PlanRequest
    {
        Model = model.ToPlacementTree(),
        DeviceMap = DeviceMapSpec.Parse("auto"),
        MaxMemory = ShardPipe.Placement.MaxMemory.Parse("cpu=48GiB"),
        NoSplitModuleClasses = model.NoSplitModules,
        DType = DType.BF16,
    });

    [Fact]
    public void A_4bit_70B_plan_fits_where_the_bf16_one_does_not()
    {
        var dense = AutoModel.FromConfig(Llama70B(null));
        var packed = AutoModel.FromConfig(Llama70B(CompressedTensorsConfig.Json(4, 128, symmetric: true, new[] { "lm_head" })));
        Assert.Equal(560, QuantizedLinears.Of(packed).Count());
        var denseBytes = ModuleSizes.Compute(dense.ToPlacementTree(), DType.BF16, memoryBytes: true);
        var packedBytes = ModuleSizes.Compute(packed.ToPlacementTree(), DType.BF16, memoryBytes: true);
        // A q_proj: 8192×8192 codes at 4 bits, 8192×64 float32 scales.
        Assert.Equal(8192L * 8192 / 2 + 8192L * 64 * 4, (long)packedBytes["model.layers.0.self_attn.q_proj"]);
        Assert.InRange(packedBytes[""] / denseBytes[""], 0.25, 0.35);

        Assert.Contains(Plan(dense).DeviceMap, e => e.Value.Kind == "disk");
        Assert.DoesNotContain(Plan(packed).DeviceMap, e => e.Value.Kind == "disk");
    }
}
