using System.Text.Json.Nodes;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Modeling.Tokenization;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Modeling;

/// <summary>The reference GPT-2 style tokenizer: every recorded string encodes to HF's ids and tokens and decodes back.</summary>
public class TokenizerTests
{
    private static string Folder => Path.Combine(TestPaths.HfReference, "tokenizer");

    [Fact]
    public void Every_reference_string_encodes_and_decodes_like_hugging_face()
    {
        var tok = ModelTokenizer.Load(Folder);
        var reference = JsonNode.Parse(File.ReadAllText(Path.Combine(Folder, "reference.json")))!;
        foreach (var c in (JsonArray)reference["cases"]!)
        {
            string text = c!["text"]!.GetValue<string>();
            var (ids, tokens) = tok.Encode(text);
            Assert.Equal(((JsonArray)c["ids"]!).Select(x => x!.GetValue<int>()), ids);
            Assert.Equal(((JsonArray)c["tokens"]!).Select(x => x!.GetValue<string>()), tokens);
            Assert.Equal(c["decoded"]!.GetValue<string>(), tok.Decode(ids.Select(i => (long)i)));
        }
        foreach (var (special, id) in (JsonObject)reference["special_tokens"]!)
            Assert.Equal(id!.GetValue<int>(), tok.SpecialTokens[special]);
    }

    [Fact]
    public void Tokenize_cli_prints_ids_and_tokens()
    {
        var r = ShardPipeProcess.Run("tokenize", "--model", Folder, "--text", "hello, world!", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = JsonNode.Parse(r.Stdout)!;
        var tok = ModelTokenizer.Load(Folder);
        Assert.Equal(tok.Encode("hello, world!").Ids, ((JsonArray)json["ids"]!).Select(x => x!.GetValue<int>()));
        Assert.Equal(5, ((JsonArray)json["tokens"]!).Count);
    }

    [Fact]
    public void Generate_takes_a_text_prompt_and_returns_text()
    {
        using var tmp = new TempDir();
        SyntheticLlama.Write(tmp.Path, new SyntheticLlamaSpec { VocabSize = 297, NumLayers = 2 });
        foreach (var f in new[] { "vocab.json", "merges.txt" }) File.Copy(Path.Combine(Folder, f), Path.Combine(tmp.Path, f));
        var r = ShardPipeProcess.Run("generate", "--model", tmp.Path, "--prompt", "Hello world", "--max-new-tokens", "5", "--ignore-eos", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = JsonNode.Parse(r.Stdout)!;
        var seq = ((JsonArray)json["sequences"]![0]!).Select(x => x!.GetValue<long>()).ToArray();
        var prompt = ModelTokenizer.Load(Folder).Encode("Hello world").Ids;
        Assert.Equal(prompt.Select(i => (long)i), seq.Take(prompt.Length));
        Assert.Equal(ModelTokenizer.Load(Folder).Decode(seq.Skip(prompt.Length)), json["text"]![0]!.GetValue<string>());
    }

    [Fact]
    public void A_byte_level_bpe_tokenizer_json_encodes_like_the_vocab_and_merges_files()
    {
        using var tmp = new TempDir();
        var vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(Folder, "vocab.json")))!;
        var merges = File.ReadAllLines(Path.Combine(Folder, "merges.txt")).Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal))
            .Select(l => (JsonNode)JsonValue.Create(l)!).ToArray();
        var tokenizerJson = new JsonObject
        {
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = 296, ["content"] = "<|endoftext|>", ["special"] = true }),
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false },
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab.DeepClone(), ["merges"] = new JsonArray(merges) },
        };
        File.WriteAllText(tmp.File("tokenizer.json"), tokenizerJson.ToJsonString());
        var fromJson = ModelTokenizer.Load(tmp.Path);
        var fromFiles = ModelTokenizer.Load(Folder);
        var reference = JsonNode.Parse(File.ReadAllText(Path.Combine(Folder, "reference.json")))!;
        foreach (var c in (JsonArray)reference["cases"]!)
        {
            string text = c!["text"]!.GetValue<string>();
            Assert.Equal(fromFiles.Encode(text).Ids, fromJson.Encode(text).Ids);
        }
        // add_prefix_space from tokenizer_config.json puts a space before the text, as GPT2Tokenizer does.
        File.WriteAllText(tmp.File("tokenizer_config.json"), "{\"add_prefix_space\": true}");
        Assert.Equal(fromFiles.Encode(" Hello").Ids, ModelTokenizer.Load(tmp.Path).Encode("Hello").Ids);
    }
}
