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
        var json = CommonOptions.Json();
        var cmd = new Command("tokenize", "Encode a text with the model's tokenizer (vocab.json+merges.txt, tokenizer.json, tokenizer.model)") { model, text, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            var tok = ModelTokenizer.Load(ModelLocator.Locate(parse.GetValue(model)!));
            var (ids, tokens) = tok.Encode(parse.GetValue(text)!);
            if (parse.GetValue(json))
                JsonOut.Print(new JsonObject
                {
                    ["ids"] = new JsonArray(ids.Select(i => (JsonNode)JsonValue.Create(i)).ToArray()),
                    ["tokens"] = new JsonArray(tokens.Select(t => (JsonNode)JsonValue.Create(t)!).ToArray()),
                    ["decoded"] = tok.Decode(ids.Select(i => (long)i)),
                });
            else
                Tables.Print(new[] { "id>", "token" }, ids.Select((id, i) => new[] { id.ToString(System.Globalization.CultureInfo.InvariantCulture), tokens[i] }));
            return 0;
        });
        return cmd;
    }
}
