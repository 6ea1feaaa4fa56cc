using System.Text.Json.Nodes;
using ShardPipe.Modeling.Chat;
using ShardPipe.Modeling.Tokenization;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>
/// <c>shardpipe tokenize --model M --chat FILE --json</c> on a folder that holds only tokenizer files (a Llama-3-style
/// tokenizer.json whose post-processor adds &lt;|begin_of_text|&gt;, and tokenizer_config.json with the published Llama 3
/// chat template): the rendered text is jinja2's, and the ids are what Hugging Face's tokenizers library gives that text
/// without special tokens (apply_chat_template(tokenize=True); Fixtures/chat-templates/llama3.ids.json, written by
/// ops/tokenizer-reference.mjs) — so the prompt has exactly one BOS, the template's.
/// </summary>
public class TokenizeChatCliTests
{
    private static readonly string Fixtures = Path.Combine(TestPaths.RepoRoot, "Tests", "Modeling", "Fixtures", "chat-templates");
    private const int Bos = 297; // <|begin_of_text|> in the reference tokenizer

    private static string TokenizerFolder(TempDir tmp)
    {
        File.Copy(Path.Combine(TestPaths.HfReference, "tokenizer_json", "llama3", "tokenizer.json"), tmp.File("tokenizer.json"));
        File.WriteAllText(tmp.File("tokenizer_config.json"), new JsonObject
        {
            ["bos_token"] = "<|begin_of_text|>",
            ["eos_token"] = "<|endoftext|>",
            ["tokenizer_class"] = "PreTrainedTokenizerFast",
            ["chat_template"] = File.ReadAllText(Path.Combine(Fixtures, "llama3.jinja")),
        }.ToJsonString());
        return tmp.Path;
    }

    /// <summary>A case of conversations.json as a --chat file: its tools flag replaced by the tools, its kwargs as chat_template_kwargs.</summary>
    private static JsonObject Case(string name)
    {
        var all = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures, "conversations.json")))!;
        var c = (JsonObject)all["cases"]!.AsArray().First(c => c!["name"]!.GetValue<string>() == name)!.DeepClone();
        if (c["tools"] is not null) c["tools"] = all["tools"]!.DeepClone();
        if (c["kwargs"] is { } k) { c.Remove("kwargs"); c["chat_template_kwargs"] = k.DeepClone(); }
        return c;
    }

    [Fact]
    public void Tokenize_chat_prints_the_rendered_text_and_apply_chat_template_s_ids_with_one_bos()
    {
        using var tmp = new TempDir();
        string folder = TokenizerFolder(tmp);
        var c = Case("system_multi_turn");
        string chatFile = tmp.File("chat.json");
        File.WriteAllText(chatFile, new JsonObject { ["messages"] = c["messages"]!.DeepClone(), ["add_generation_prompt"] = true }.ToJsonString());
        var cli = ShardPipeProcess.Run("tokenize", "--model", folder, "--chat", chatFile, "--json");
        Assert.True(cli.ExitCode == 0, cli.Stderr);
        var output = JsonNode.Parse(cli.Stdout)!;
        var expectedText = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures, "llama3.expected.json")))!["cases"]!["system_multi_turn"]!["rendered"]!.GetValue<string>();
        Assert.Equal(expectedText, output["text"]!.GetValue<string>());
        var ids = output["ids"]!.AsArray().Select(i => i!.GetValue<int>()).ToArray();
        var expectedIds = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures, "llama3.ids.json")))!["ids"]!["system_multi_turn"]!.AsArray().Select(i => i!.GetValue<int>()).ToArray();
        Assert.Equal(expectedIds, ids);
        Assert.Equal(1, ids.Count(i => i == Bos));
        Assert.Equal(Bos, ids[0]);
        // Plain text still gets the tokenizer's own BOS, as tokenizer(text) does.
        var plain = ShardPipeProcess.Run("tokenize", "--model", folder, "--text", "Hello", "--json");
        Assert.Equal(Bos, JsonNode.Parse(plain.Stdout)!["ids"]![0]!.GetValue<int>());
    }

    [Fact]
    public void Every_case_s_ids_equal_the_tokenizers_library_without_special_tokens()
    {
        using var tmp = new TempDir();
        string folder = TokenizerFolder(tmp);
        var tok = ModelTokenizer.Load(folder);
        var templates = ChatTemplates.Find(folder)!;
        var expected = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures, "llama3.ids.json")))!["ids"]!.AsObject();
        Assert.True(expected.Count >= 10);
        foreach (var (name, ids) in expected)
        {
            var input = ChatInput.FromJson(Case(name), name, defaultGenerationPrompt: false);
            string text = templates.Apply(input, ChatTemplates.SpecialTokens(tok.Config), now: new DateTime(2024, 7, 26));
            Assert.Equal(ids!.AsArray().Select(i => i!.GetValue<int>()).ToArray(), tok.Encode(text, addSpecialTokens: false).Ids);
        }
    }

    [Theory]
    [InlineData("{}", "'messages' must be a non-empty list")]
    [InlineData("[1]", "must be a JSON object")]
    [InlineData("{\"messages\": [{\"content\": \"x\"}]}", "'messages[0]' must be an object with a string 'role'")]
    [InlineData("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"add_generation_prompt\": true, \"continue_final_message\": true}", "not compatible")]
    public void A_bad_chat_file_is_one_error_line_naming_it(string body, string message)
    {
        using var tmp = new TempDir();
        string folder = TokenizerFolder(tmp);
        File.WriteAllText(tmp.File("chat.json"), body);
        var cli = ShardPipeProcess.Run("tokenize", "--model", folder, "--chat", tmp.File("chat.json"));
        Assert.Equal(2, cli.ExitCode);
        Assert.Contains(message, cli.Stderr);
        Assert.StartsWith("error:", cli.LastMessageLine);
    }
}
