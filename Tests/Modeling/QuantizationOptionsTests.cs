using System.Text.Json.Nodes;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Modeling;

/// <summary>from_pretrained's load_in_8bit / load_in_4bit / quantization_config: checked as transformers checks them, then quantize-on-load (or, for a calibrating method, refused naming the option).</summary>
public class QuantizationOptionsTests
{
    private static Exception Load(FromPretrainedOptions options, string? folder = null) =>
        Assert.ThrowsAny<ShardPipeException>(() => PreTrainedModel.FromPretrained(folder ?? TestPaths.Model("gpt2"), options));

    [Theory]
    [InlineData(true, false, null, "int8", -1)]
    [InlineData(false, true, null, "int4", 64)]
    [InlineData(false, false, "{\"load_in_8bit\": true}", "int8", -1)]
    [InlineData(false, false, "{\"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"nf4\"}", "int4", 64)]
    public void Load_in_8bit_and_4bit_become_quantize_on_load(bool eight, bool four, string? config, string scheme, int group)
    {
        var options = QuantizeOnLoad.Map(new FromPretrainedOptions { LoadIn8Bit = eight, LoadIn4Bit = four, QuantizationConfig = config is null ? null : JsonNode.Parse(config)!.AsObject() });
        Assert.Equal((scheme, group), (options.Quantize, options.QuantizeGroupSize));
    }

    [Fact]
    public void A_model_loaded_in_8bit_holds_packed_weights_and_stays_close_to_the_float_model()
    {
        string folder = TestPaths.Model("llama_untied");
        var full = PreTrainedModel.FromPretrained(folder);
        var eight = PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { LoadIn8Bit = true });
        try
        {
            var ids = ShardPipe.Modeling.Generation.IdRows.ToTensor(new[] { new long[] { 5, 17, 42, 9, 3 } });
            var a = full.Forward(ids, lastOnly: true);
            var b = eight.Forward(ids, lastOnly: true);
            Assert.Contains(eight.NamedModules(), m => m.Module is ShardPipe.Modeling.Layers.Linear { Quantized: not null });
            Assert.True(b.sub(a).abs().max().item<float>() < 0.05f * a.abs().max().item<float>(), "8-bit logits far from the float model's");
        }
        finally { full.Release(); eight.Release(); }
    }

    [Fact]
    public void A_calibrating_method_in_quantization_config_is_refused_naming_the_option()
    {
        var e = Load(new FromPretrainedOptions { QuantizationConfig = JsonNode.Parse("{\"quant_method\": \"gptq\", \"bits\": 4}")!.AsObject() });
        Assert.IsType<UnsupportedException>(e);
        Assert.StartsWith("quantization_config:", e.Message);
        Assert.Contains("gptq", e.Message);
        // Before any file is read.
        Assert.IsType<UnsupportedException>(Load(new FromPretrainedOptions { QuantizationConfig = JsonNode.Parse("{\"quant_method\": \"awq\"}")!.AsObject() }, "/nonexistent/model"));
    }

    [Theory]
    [InlineData(true, true, null, "only one can be used")]
    [InlineData(true, false, "{\"load_in_8bit\": true}", "at the same time")]
    [InlineData(false, true, "{\"quant_method\": \"awq\"}", "at the same time")]
    [InlineData(false, false, "{\"load_in_8bit\": true, \"load_in_4bit\": true}", "only one can be used")]
    [InlineData(false, false, "{\"bits\": 4}", "quant_method")]
    [InlineData(false, false, "{\"load_in_8bit\": \"yes\"}", "load_in_8bit must be true or false")]
    public void Contradictory_or_incomplete_requests_are_invalid_input(bool eight, bool four, string? config, string expected)
    {
        var e = Load(new FromPretrainedOptions { LoadIn8Bit = eight, LoadIn4Bit = four, QuantizationConfig = config is null ? null : JsonNode.Parse(config)!.AsObject() });
        Assert.IsType<InvalidInputException>(e);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Without_them_nothing_is_requested()
    {
        Assert.Null(QuantizeOnLoad.Requested(new FromPretrainedOptions()));
        Assert.Null(QuantizeOnLoad.Requested(new FromPretrainedOptions { QuantizationConfig = null, LoadIn4Bit = false }));
    }
}
