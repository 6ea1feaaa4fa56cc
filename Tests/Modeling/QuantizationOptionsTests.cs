using System.Text.Json.Nodes;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Modeling;

/// <summary>from_pretrained's load_in_8bit / load_in_4bit / quantization_config: checked as transformers checks them, then refused naming the option.</summary>
public class QuantizationOptionsTests
{
    private static Exception Load(FromPretrainedOptions options, string? folder = null) =>
        Assert.ThrowsAny<ShardPipeException>(() => PreTrainedModel.FromPretrained(folder ?? TestPaths.Model("gpt2"), options));

    [Theory]
    [InlineData(true, false, null, "load_in_8bit", "int8")]
    [InlineData(false, true, null, "load_in_4bit", "int4")]
    [InlineData(false, false, "{\"load_in_8bit\": true}", "quantization_config", "int8")]
    [InlineData(false, false, "{\"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"nf4\"}", "quantization_config", "int4")]
    [InlineData(false, false, "{\"quant_method\": \"gptq\", \"bits\": 4}", "quantization_config", "gptq")]
    public void A_quantize_on_load_request_is_refused_naming_the_option(bool eight, bool four, string? config, string option, string scheme)
    {
        var e = Load(new FromPretrainedOptions { LoadIn8Bit = eight, LoadIn4Bit = four, QuantizationConfig = config is null ? null : JsonNode.Parse(config)!.AsObject() });
        Assert.IsType<UnsupportedException>(e);
        Assert.StartsWith(option + ":", e.Message);
        Assert.Contains(scheme, e.Message);
    }

    [Fact]
    public void The_refusal_comes_before_any_file_is_read()
    {
        var e = Load(new FromPretrainedOptions { LoadIn8Bit = true }, "/nonexistent/model");
        Assert.IsType<UnsupportedException>(e);
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
