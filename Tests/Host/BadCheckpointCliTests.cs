using System.Buffers.Binary;
using System.Text.Json.Nodes;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>
/// Bad checkpoints and configs given to the real <c>shardpipe</c> process on its loading path (<c>forward</c>,
/// <c>generate</c>): each exits 2 within 60 s and under 1.5 GB peak RSS (the runtime included), with a last stderr
/// line <c>error: &lt;file&gt;: &lt;field&gt; …</c> — checked before anything is built or allocated.
/// </summary>
public class BadCheckpointCliTests
{
    private const long RssLimit = 1536L << 20;

    private static string Copy(TempDir tmp, string model)
    {
        foreach (var f in Directory.GetFiles(TestPaths.Model(model))) File.Copy(f, tmp.File(Path.GetFileName(f)));
        return tmp.Path;
    }

    private static void EditJson(string file, Action<JsonObject> edit)
    {
        var o = JsonNode.Parse(File.ReadAllText(file))!.AsObject();
        edit(o);
        File.WriteAllText(file, o.ToJsonString());
    }

    public static TheoryData<string> Cases => new()
    {
        "layers 1e9", "gpt2 n_positions 1e6", "hidden above 2^31", "architectures [1]", "eos id as a string",
        "duplicate key", "variant escaping the folder", "config.json symlink outside", "header length 2^60",
        "tensor beyond its file", "index naming a shard outside", "truncated shard",
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_bad_checkpoint_exits_2_quickly_in_bounded_memory_naming_file_and_field(string name)
    {
        using var tmp = new TempDir();
        using var outside = new TempDir();
        string model = name.StartsWith("gpt2") ? "gpt2" : "llama_untied";
        string dir = Copy(tmp, model);
        string config = Path.Combine(dir, "config.json");
        string shard = Directory.GetFiles(dir, "*.safetensors").Order().First();
        var args = new List<string> { "forward", "--model", dir, "--input-ids", "5,17,42", "--json" };
        (string File, string Field) expect;
        switch (name)
        {
            case "layers 1e9":
                EditJson(config, o => o["num_hidden_layers"] = 1_000_000_000);
                expect = ("config.json", "num_hidden_layers");
                break;
            case "gpt2 n_positions 1e6":
                EditJson(config, o => o["n_positions"] = 1_000_000);
                expect = ("config.json", "n_positions");
                break;
            case "hidden above 2^31":
                EditJson(config, o => o["hidden_size"] = 4_294_967_296L);
                expect = ("config.json", "hidden_size");
                break;
            case "architectures [1]":
                EditJson(config, o => o["architectures"] = new JsonArray(1));
                expect = ("config.json", "architectures");
                break;
            case "eos id as a string":
                EditJson(Path.Combine(dir, "generation_config.json"), o => o["eos_token_id"] = "2");
                args = new List<string> { "generate", "--model", dir, "--input-ids", "5,17,42", "--max-new-tokens", "2", "--json" };
                expect = ("generation_config.json", "eos_token_id");
                break;
            case "duplicate key":
                File.WriteAllText(config, File.ReadAllText(config).TrimEnd().TrimEnd('}') + ", \"hidden_size\": 64}");
                expect = ("config.json", "hidden_size");
                break;
            case "variant escaping the folder":
                args.AddRange(new[] { "--variant", "/../../x/y" });
                expect = ("variant", "/../../x/y");
                break;
            case "config.json symlink outside":
                File.Copy(config, Path.Combine(outside.Path, "config.json"));
                File.Delete(config);
                File.CreateSymbolicLink(config, Path.Combine(outside.Path, "config.json"));
                expect = ("config.json", "symlink");
                break;
            case "header length 2^60":
                using (var f = File.OpenWrite(shard))
                {
                    var len = new byte[8];
                    BinaryPrimitives.WriteUInt64LittleEndian(len, 1UL << 60);
                    f.Write(len);
                }
                expect = (Path.GetFileName(shard), "header");
                break;
            case "tensor beyond its file":
                using (var f = new FileStream(shard, FileMode.Open))
                    f.SetLength(f.Length - 1);
                expect = (Path.GetFileName(shard), "offsets"); // the last tensor's data_offsets run past the data
                break;
            case "index naming a shard outside":
                EditJson(Path.Combine(dir, "model.safetensors.index.json"), o =>
                {
                    var map = o["weight_map"]!.AsObject();
                    string first = map.First().Key;
                    map[first] = "../../../etc/passwd";
                });
                expect = ("model.safetensors.index.json", "../../../etc/passwd");
                break;
            case "truncated shard":
                using (var f = new FileStream(shard, FileMode.Open))
                    f.SetLength(100);
                expect = (Path.GetFileName(shard), "header length"); // the header cut short
                break;
            default:
                throw new ArgumentException(name);
        }

        var r = ShardPipeProcess.Run(args.ToArray());
        string last = r.LastMessageLine;
        Assert.True(r.ExitCode == 2, $"{name}: exit {r.ExitCode}; stderr: {r.Stderr}");
        Assert.Equal("", r.Stdout.Trim());
        Assert.StartsWith("error: ", last);
        Assert.Contains(expect.File, last);
        Assert.Contains(expect.Field, last);
        Assert.True(r.Elapsed < TimeSpan.FromSeconds(60), $"{name}: took {r.Elapsed.TotalSeconds:0} s");
        Assert.True(r.PeakRssBytes is > 0 and < RssLimit, $"{name}: peak RSS {r.PeakRssBytes >> 20} MiB");
    }
}
