using System.Diagnostics;
using System.Text.Json.Nodes;
using ShardPipe.Modeling.Tokenization;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Modeling;

/// <summary>A tokenizer.json whose pre-tokenizer regex backtracks catastrophically is refused within seconds, naming the file — never a hang.</summary>
public class TokenizerRegexTimeoutTests
{
    [Fact]
    public void A_runaway_pattern_is_a_typed_error_within_seconds()
    {
        using var tmp = new TempDir();
        var t = JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.HfReference, "tokenizer_json", "gpt2", "tokenizer.json")))!.AsObject();
        t["pre_tokenizer"] = new JsonObject
        {
            ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = "(a+)+$" }, ["behavior"] = "Isolated", ["invert"] = false,
        };
        string path = tmp.File("tokenizer.json");
        File.WriteAllText(path, t.ToJsonString());
        var tokenizer = TokenizerJson.Load(path);
        Assert.NotEmpty(tokenizer.Encode("aaab", addSpecialTokens: false)); // ordinary text encodes
        var clock = Stopwatch.StartNew();
        var ex = Assert.Throws<UnsupportedException>(() => tokenizer.Encode(new string('a', 40) + "!", addSpecialTokens: false));
        Assert.Contains(path, ex.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"took {clock.Elapsed.TotalSeconds:0} s");
    }
}
