using ShardPipe.Host.Serving;

namespace ShardPipe.Tests.Host;

/// <summary>Tool calls read from a model's text in the formats the common templates teach (Hermes/Qwen, Llama 3.x JSON, Mistral), and text that is none of them left as content.</summary>
public class ToolCallParserTests
{
    [Theory]
    [InlineData("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", null, "get_weather", "{\"city\":\"Paris\"}")]
    [InlineData("Let me check.\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>", "Let me check.", "add", "{\"a\":1,\"b\":2}")]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}", null, "get_weather", "{\"city\":\"Oslo\"}")]
    [InlineData("<|python_tag|>{\"name\": \"add\", \"parameters\": {\"a\": 3}}", null, "add", "{\"a\":3}")]
    [InlineData("[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {\"a\": 1}}]", null, "add", "{\"a\":1}")]
    [InlineData("[TOOL_CALLS]add[ARGS]{\"a\": 5}", null, "add", "{\"a\":5}")]
    public void Calls_are_read_in_each_format(string text, string? content, string name, string arguments)
    {
        var parsed = ToolCallParser.Parse(text);
        Assert.Equal(content, parsed.Content);
        var call = Assert.Single(parsed.Calls);
        Assert.Equal(name, call.Name);
        Assert.Equal(arguments, System.Text.Json.Nodes.JsonNode.Parse(call.Arguments)!.ToJsonString());
        Assert.StartsWith("call_", call.Id);
    }

    [Fact]
    public void Several_calls_and_plain_text()
    {
        var two = ToolCallParser.Parse("<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": {\"x\": 1}}</tool_call>");
        Assert.Equal(new[] { "a", "b" }, two.Calls.Select(c => c.Name));
        var semi = ToolCallParser.Parse("{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {}}");
        Assert.Equal(new[] { "a", "b" }, semi.Calls.Select(c => c.Name));
        foreach (var text in new[] { "Just an answer.", "{\"not\": \"a call\"}", "<tool_call>not json</tool_call>", "[TOOL_CALLS] nothing" })
        {
            var parsed = ToolCallParser.Parse(text);
            Assert.Empty(parsed.Calls);
            Assert.Equal(text, parsed.Content);
        }
        // A named tool_choice: a bare JSON object is that function's arguments.
        Assert.Equal("get_weather", Assert.Single(ToolCallParser.Parse("{\"city\": \"Rome\"}", forcedFunction: "get_weather").Calls).Name);
    }

    [Theory]
    [InlineData("Hello there", 11)]
    [InlineData("Checking <tool_call>{\"name\"", 9)]
    [InlineData("Checking <tool_", 9)]
    [InlineData("  {\"name\": ", 0)]
    [InlineData("Text [TOOL_CA", 5)]
    public void Streaming_holds_back_what_may_open_a_call(string text, int safe) => Assert.Equal(safe, ToolCallParser.SafeContentLength(text));
}
