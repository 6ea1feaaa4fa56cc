using System.Text.Json.Nodes;
using ShardPipe.Modeling.Tokenization;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// Chat templates rendered as transformers 4.38 renders them: each case of Fixtures/chat_templates.json (Llama 2 and 3,
/// Mistral, ChatML/Qwen2, Zephyr and a whitespace-control template; written by jinja2 with transformers' settings,
/// see make_chat_templates.py) gives the same text, or the same raise_exception message; constructs outside the
/// subset are refused naming them.
/// </summary>
public class ChatTemplateTests
{
    private static readonly JsonObject Fixture = JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "Tests", "Modeling", "Fixtures", "chat_templates.json")))!.AsObject();

    public static TheoryData<int> Cases()
    {
        var data = new TheoryData<int>();
        for (int i = 0; i < Fixture["cases"]!.AsArray().Count; i++) data.Add(i);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Renders_as_jinja2_with_transformers_settings(int index)
    {
        var c = Fixture["cases"]![index]!;
        var template = ChatTemplate.Parse(Fixture["templates"]![c["template"]!.GetValue<string>()]!.GetValue<string>());
        var messages = Fixture["conversations"]![c["conversation"]!.GetValue<int>()]!.AsArray()
            .Select(m => new ChatMessage(m!["role"]!.GetValue<string>(), m["content"]!.GetValue<string>())).ToList();
        var special = new Dictionary<string, string> { ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["unk_token"] = "<unk>" };
        bool add = c["add_generation_prompt"]!.GetValue<bool>();
        if (c["error"] is JsonValue error)
        {
            var ex = Assert.Throws<InvalidInputException>(() => template.Render(messages, add, special));
            Assert.Contains(error.GetValue<string>(), ex.Message);
        }
        else Assert.Equal(c["rendered"]!.GetValue<string>(), template.Render(messages, add, special));
    }

    [Theory]
    [InlineData("{% macro m() %}x{% endmacro %}", "'{% macro %}' is not supported")]
    [InlineData("{{ messages | tojson }}", "the filter '| tojson' is not supported")]
    [InlineData("{% set ns = namespace(a=1) %}", "keyword arguments are not supported")]
    [InlineData("{% for a, b in x %}{% endfor %}", "unpacking")]
    [InlineData("{{ x is mapping }}", "the test 'is mapping' is not supported")]
    [InlineData("{% if x %}never closed", "never closed")]
    [InlineData("{{ {'a': 1} }}", "dict literals")]
    public void Constructs_outside_the_subset_are_refused_naming_them(string source, string expect)
    {
        var ex = Assert.Throws<UnsupportedException>(() => ChatTemplate.Parse(source));
        Assert.Contains(expect, ex.Message);
    }
}
