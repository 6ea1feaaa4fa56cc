using System.Text;
using System.Text.Json.Nodes;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Bench.Gguf;
using ShardPipe.Modeling.Tokenization;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host.Gguf;

/// <summary>
/// The GGUF writer against llama.cpp itself (node-llama-cpp 3.21.1 from npm, installed into a cache folder once): an F32
/// GGUF of a generated model loads, and llama.cpp's greedy continuation of a prompt equals <c>shardpipe generate
/// --greedy</c>'s, token for token (a wrong rotary row order, tensor name or hyper-parameter would change them).
/// </summary>
public class GgufWriterTests
{
    private static string Model(TempDir tmp, string name, SyntheticLlamaSpec spec)
    {
        string folder = tmp.Sub(name);
        SyntheticLlama.Write(folder, spec);
        ByteLevelTokenizerFile.Write(folder, spec.VocabSize);
        return folder;
    }

    private static long[] ShardPipeGreedy(string folder, long[] prompt, int n)
    {
        var cli = ShardPipeProcess.Run("generate", "--model", folder, "--input-ids", string.Join(',', prompt), "--max-new-tokens", $"{n}", "--greedy", "--ignore-eos", "--json");
        Assert.True(cli.ExitCode == 0, cli.Stderr);
        return JsonNode.Parse(cli.Stdout)!["sequences"]![0]!.AsArray().Select(t => t!.GetValue<long>()).Skip(prompt.Length).ToArray();
    }

    [Fact]
    public void Llama_cpp_greedy_tokens_from_an_f32_gguf_equal_shardpipe_generate()
    {
        var llama = LlamaCppRunner.Prepare(script: Path.Combine(TestPaths.RepoRoot, "ops", "llamacpp", "run.mjs"));
        using var tmp = new TempDir();
        var prompt = new long[] { 1, 72, 101, 108, 108, 111, 44, 32, 119 };
        // Grouped-query attention (4 heads, 2 key/value heads, head size 16), and tied embeddings with head size 24.
        var cases = new[]
        {
            ("gqa", new SyntheticLlamaSpec()),
            ("tied", new SyntheticLlamaSpec { HiddenSize = 96, NumHeads = 4, NumKeyValueHeads = 4, IntermediateSize = 192, NumLayers = 3, VocabSize = 300, TieWordEmbeddings = true, Seed = 99 }),
        };
        foreach (var (name, spec) in cases)
        {
            string folder = Model(tmp, name, spec);
            string gguf = tmp.File($"{name}.gguf");
            GgufWriter.Write(folder, gguf, GgmlType.F32);
            var ours = ShardPipeGreedy(folder, prompt, 20);
            var theirs = llama.Invoke(TimeSpan.FromMinutes(2), "--model", gguf, "--threads", "2", "--f32-cache", "--greedy", string.Join(',', prompt), "--new", "20")
                ["greedy_tokens"]!.AsArray().Select(t => t!.GetValue<long>()).ToArray();
            Assert.Equal(20, ours.Length);
            Assert.True(ours.Distinct().Count() > 1, $"{name}: a continuation of one repeated token would not tell much");
            Assert.Equal(ours, theirs);
        }
    }

    [Fact]
    public void The_header_counts_tensors_and_aligns_the_data_and_quantized_files_shrink()
    {
        using var tmp = new TempDir();
        var spec = new SyntheticLlamaSpec { IntermediateSize = 192 };
        string folder = Model(tmp, "m", spec);
        long f32 = GgufWriter.Write(folder, tmp.File("f32.gguf"), GgmlType.F32);
        long q8 = GgufWriter.Write(folder, tmp.File("q8.gguf"), GgmlType.Q8_0);
        long q4 = GgufWriter.Write(folder, tmp.File("q4.gguf"), GgmlType.Q4_0);
        var head = File.ReadAllBytes(tmp.File("f32.gguf"));
        Assert.Equal("GGUF", Encoding.ASCII.GetString(head, 0, 4));
        Assert.Equal(3u, BitConverter.ToUInt32(head, 4));
        Assert.Equal((ulong)(1 + 9 * spec.NumLayers + 2), BitConverter.ToUInt64(head, 8));
        Assert.Equal(0, f32 % GgufWriter.Alignment);
        // Matrices dominate: Q8_0 ≈ 34/128 of F32, Q4_0 ≈ 18/128.
        long matrices = SyntheticLlama.StateDictLayout(spec).Where(t => t.Shape.Length == 2).Sum(t => t.Shape[0] * t.Shape[1]);
        Assert.InRange(f32 - q8, matrices * (4 - 34 / 32.0) - 4096, matrices * (4 - 34 / 32.0) + 4096);
        Assert.InRange(f32 - q4, matrices * (4 - 18 / 32.0) - 4096, matrices * (4 - 18 / 32.0) + 4096);
    }

    [Fact]
    public void A_checkpoint_without_tokenizer_json_is_a_typed_error_naming_it()
    {
        using var tmp = new TempDir();
        string folder = tmp.Sub("m");
        SyntheticLlama.Write(folder, new SyntheticLlamaSpec());
        var ex = Assert.Throws<InvalidInputException>(() => GgufWriter.Write(folder, tmp.File("x.gguf"), GgmlType.F32));
        Assert.Contains("tokenizer.json", ex.Message);
        Assert.False(File.Exists(tmp.File("x.gguf")));
    }
}
