using System.CommandLine;
using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Chat;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe tokenize</c>: a model folder's tokenizer applied to a text.</summary>
public static class TokenizeCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var text = new Option<string>("--text") { Description = "Text to encode" };
        var chat = new Option<string>("--chat")
        {
            Description = "A JSON file {\"messages\": [...], \"tools\": [...], \"add_generation_prompt\": true, \"chat_template_kwargs\": {...}}: render it with the model's chat template and encode it as apply_chat_template(tokenize=True) does (no special tokens added)",
        };
        var noSpecial = new Option<bool>("--no-special-tokens") { Description = "Encode without the special tokens the tokenizer adds (add_special_tokens=False)" };
        var json = CommonOptions.Json();
        var cmd = new Command("tokenize", "Encode a text with the model's tokenizer (tokenizer.json, tokenizer.model, or vocab.json+merges.txt), as tokenizer(text) does; or a chat (--chat) as apply_chat_template does")
            { model, text, chat, noSpecial, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            if ((parse.GetValue(text) is null) == (parse.GetValue(chat) is null)) throw new InvalidInputException("give --text TEXT or --chat FILE (one of them)");
            string folder = ModelLocator.Locate(parse.GetValue(model)!);
            var tok = ModelTokenizer.Load(folder);
            string input;
            bool addSpecial = !parse.GetValue(noSpecial);
            if (parse.GetValue(chat) is { } chatFile)
            {
                if (!File.Exists(chatFile)) throw new InvalidInputException($"--chat {chatFile}: no such file");
                JsonNode? node;
                try { node = JsonNode.Parse(File.ReadAllText(chatFile)); }
                catch (System.Text.Json.JsonException e) { throw new InvalidInputException($"--chat {chatFile}: not valid JSON: {e.Message}"); }
                var chatInput = ChatInput.FromJson(node, $"--chat {chatFile}");
                var templates = ChatTemplates.Find(folder) ?? throw new InvalidInputException($"{folder}: no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json's chat_template)");
                input = templates.Apply(chatInput, ChatTemplates.SpecialTokens(tok.Config));
                addSpecial = false; // the template writes the special tokens it wants (one BOS), as apply_chat_template encodes
            }
            else input = parse.GetValue(text)!;
            var (ids, tokens) = tok.Encode(input, addSpecialTokens: addSpecial);
            var asLongs = ids.Select(i => (long)i).ToList();
            if (parse.GetValue(json))
                JsonOut.Print(new JsonObject
                {
                    ["text"] = parse.GetValue(chat) is null ? null : input,
                    ["ids"] = new JsonArray(ids.Select(i => (JsonNode)JsonValue.Create(i)).ToArray()),
                    ["tokens"] = new JsonArray(tokens.Select(t => (JsonNode)JsonValue.Create(t)!).ToArray()),
                    ["decoded"] = tok.Decode(asLongs),
                    ["decoded_skip_special"] = tok.Decode(asLongs, skipSpecialTokens: true),
                    ["format"] = tok.Format,
                });
            else
            {
                if (parse.GetValue(chat) is not null) Console.WriteLine(input);
                Tables.Print(new[] { "id>", "token" }, ids.Select((id, i) => new[] { id.ToString(System.Globalization.CultureInfo.InvariantCulture), tokens[i] }));
            }
            return 0;
        });
        return cmd;
    }
}
