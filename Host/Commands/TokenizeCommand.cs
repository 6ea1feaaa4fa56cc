using System.CommandLine;
using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe tokenize</c>: a model folder's tokenizer applied to a text.</summary>
public static class TokenizeCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var text = new Option<string>("--text") { Description = "Text to encode", Required = true };
        var noSpecial = new Option<bool>("--no-special-tokens") { Description = "Encode without the special tokens the tokenizer adds (add_special_tokens=False)" };
        var json = CommonOptions.Json();
        var cmd = new Command("tokenize", "Encode a text with the model's tokenizer (tokenizer.json, tokenizer.model, or vocab.json+merges.txt), as tokenizer(text) does")
            { model, text, noSpecial, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            var tok = ModelTokenizer.Load(ModelLocator.Locate(parse.GetValue(model)!));
            var (ids, tokens) = tok.Encode(parse.GetValue(text)!, addSpecialTokens: !parse.GetValue(noSpecial));
            var asLongs = ids.Select(i => (long)i).ToList();
            if (parse.GetValue(json))
                JsonOut.Print(new JsonObject
                {
                    ["ids"] = new JsonArray(ids.Select(i => (JsonNode)JsonValue.Create(i)).ToArray()),
                    ["tokens"] = new JsonArray(tokens.Select(t => (JsonNode)JsonValue.Create(t)!).ToArray()),
                    ["decoded"] = tok.Decode(asLongs),
                    ["decoded_skip_special"] = tok.Decode(asLongs, skipSpecialTokens: true),
                    ["format"] = tok.Format,
                });
            else
                Tables.Print(new[] { "id>", "token" }, ids.Select((id, i) => new[] { id.ToString(System.Globalization.CultureInfo.InvariantCulture), tokens[i] }));
            return 0;
        });
        return cmd;
    }
}
