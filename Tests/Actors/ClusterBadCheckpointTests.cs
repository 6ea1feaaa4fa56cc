using System.Buffers.Binary;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Bad checkpoints loaded on a real 3-node cluster: the load fails with the file (and field) named, as it does in one
/// process — the error crosses the coordinator's planning task without losing the typed error's words — and the
/// cluster then loads a good model.
/// </summary>
[Collection("cluster")]
public sealed class ClusterBadCheckpointTests(ThreeNodeCluster fixture) : IClassFixture<ThreeNodeCluster>
{
    private static string Copy(TempDir tmp)
    {
        foreach (var f in Directory.GetFiles(TestPaths.Model("llama_untied"))) File.Copy(f, tmp.File(Path.GetFileName(f)));
        return tmp.Path;
    }

    /// <summary>Replaces a shard's JSON header with bytes of the same length that are not JSON.</summary>
    private static void GarbleHeader(string shard, byte fill)
    {
        var bytes = File.ReadAllBytes(shard);
        int n = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        bytes[8] = (byte)'{';
        bytes.AsSpan(9, n - 1).Fill(fill);
        File.WriteAllBytes(shard, bytes);
    }

    [Theory]
    [InlineData("shard header not JSON", "model-00002-of-00004.safetensors", "header is not valid JSON")]
    [InlineData("config.json cut short", "config.json", "not valid JSON")]
    [InlineData("config.json duplicate key", "config.json", "hidden_size")]
    [InlineData("index not JSON", "model.safetensors.index.json", "not valid JSON")]
    [InlineData("generation_config.json not JSON", "generation_config.json", "not valid JSON")]
    public async Task A_bad_checkpoint_fails_the_load_naming_the_file(string name, string file, string field)
    {
        using var tmp = new TempDir();
        string dir = Copy(tmp);
        string config = Path.Combine(dir, "config.json");
        switch (name)
        {
            case "shard header not JSON": GarbleHeader(Path.Combine(dir, file), (byte)'x'); break;
            case "config.json cut short": File.WriteAllText(config, "{\"model_type\": \"llama\", "); break;
            case "config.json duplicate key": File.WriteAllText(config, File.ReadAllText(config).TrimEnd().TrimEnd('}') + ", \"hidden_size\": 64}"); break;
            case "index not JSON": File.WriteAllText(Path.Combine(dir, file), "{\"weight_map\": {"); break;
            case "generation_config.json not JSON": File.WriteAllText(Path.Combine(dir, file), "{\"eos_token_id\": "); break;
        }
        var ex = await Assert.ThrowsAsync<ClusterException>(() => fixture.Cluster.Client.LoadAsync(Requests.Load(dir), TimeSpan.FromMinutes(1)));
        Assert.StartsWith($"load failed: {file}: ", ex.Message);
        Assert.Contains(field, ex.Message);

        var good = await fixture.Cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(1));
        Assert.NotEmpty(good.Stages);
    }

    [Fact]
    public void Describe_names_the_outermost_typed_error_else_the_innermost_message()
    {
        var typed = new CheckpointFormatException("/m/config.json", null, "not valid JSON (x)", new System.Text.Json.JsonException("x"));
        Assert.Equal("config.json: not valid JSON (x)", ShardPipeException.Describe(new AggregateException(new InvalidOperationException("wrap", typed))));
        Assert.Equal("inner", ShardPipeException.Describe(new AggregateException(new InvalidOperationException("outer", new IOException("inner")))));
    }
}
