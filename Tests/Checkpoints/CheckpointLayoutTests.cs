using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Checkpoints;

/// <summary>Sharded checkpoints, model resolution, the HF cache layout and its symlink rules.</summary>
public class CheckpointLayoutTests
{
    private static string CopyRef(TempDir tmp, string model = "llama_untied") =>
        ModelCopies.CopyModel(TestPaths.Model(model), tmp.Sub(model));

    private static void EditIndex(string folder, Func<string, string> edit)
    {
        string p = Path.Combine(folder, "model.safetensors.index.json");
        File.WriteAllText(p, edit(File.ReadAllText(p)));
    }

    [Fact]
    public void Reference_checkpoints_open_with_every_indexed_tensor()
    {
        foreach (var name in TestPaths.ModelNames)
        {
            string folder = TestPaths.Model(name);
            string? variant = File.Exists(Path.Combine(folder, "model.safetensors.index.json")) ? null : "fp16";
            using var ckpt = Checkpoint.Open(folder, variant);
            Assert.Equal(4, ckpt.ShardFiles.Count);
            Assert.Equal(ckpt.Index!.TotalSize, ckpt.TotalBytes);
        }
    }

    [Theory]
    [InlineData("../model-00001-of-00004.safetensors")]
    [InlineData("/etc/passwd")]
    [InlineData("sub/model-00001-of-00004.safetensors")]
    [InlineData("..")]
    public void Shard_names_must_be_plain_file_names(string bad)
    {
        using var tmp = new TempDir();
        string folder = CopyRef(tmp);
        EditIndex(folder, s => s.Replace("\"model.norm.weight\": \"model-00004-of-00004.safetensors\"", $"\"model.norm.weight\": \"{bad}\""));
        var ex = Assert.Throws<CheckpointFormatException>(() => Checkpoint.Open(folder));
        Assert.Equal("model.norm.weight", ex.Tensor);
        Assert.Contains("plain file name", ex.Message);
    }

    [Fact]
    public void A_tensor_listed_twice_in_the_index_is_rejected()
    {
        using var tmp = new TempDir();
        string folder = CopyRef(tmp);
        EditIndex(folder, s => s.Replace("\"weight_map\": {", "\"weight_map\": {\n    \"model.norm.weight\": \"model-00004-of-00004.safetensors\","));
        var ex = Assert.Throws<CheckpointFormatException>(() => Checkpoint.Open(folder));
        Assert.Contains("twice", ex.Message);
    }

    [Fact]
    public void A_tensor_missing_from_its_shard_is_rejected()
    {
        using var tmp = new TempDir();
        string folder = CopyRef(tmp);
        EditIndex(folder, s => s.Replace("\"model.norm.weight\": \"model-00004-of-00004.safetensors\"", "\"model.norm.weight\": \"model-00001-of-00004.safetensors\""));
        var ex = Assert.Throws<CheckpointFormatException>(() => Checkpoint.Open(folder));
        Assert.Contains("missing from this shard", ex.Message);
        Assert.Contains("model-00001-of-00004.safetensors", ex.Message);
    }

    [Fact]
    public void A_tensor_stored_in_two_shards_is_rejected()
    {
        using var tmp = new TempDir();
        string folder = CopyRef(tmp);
        string shard = Path.Combine(folder, "model-00004-of-00004.safetensors");
        using (var f = SafeTensorsFile.Open(Path.Combine(TestPaths.Model("llama_untied"), "model-00001-of-00004.safetensors")))
        {
            var first = f.Tensors[0];
            var bytes = new byte[first.ByteLength];
            f.ReadInto(first, bytes);
            using var g = SafeTensorsFile.Open(Path.Combine(TestPaths.Model("llama_untied"), "model-00004-of-00004.safetensors"));
            var sources = g.Tensors.Select(t => { var b = new byte[t.ByteLength]; g.ReadInto(t, b); return TensorSource.FromBytes(t.Name, t.DType, t.Shape, b); }).ToList();
            sources.Add(TensorSource.FromBytes(first.Name, first.DType, first.Shape, bytes));
            SafeTensorsWriter.Write(shard, sources);
        }
        var ex = Assert.Throws<CheckpointFormatException>(() => Checkpoint.Open(folder));
        Assert.Contains("also appears", ex.Message);
    }

    [Fact]
    public void A_missing_shard_file_is_named()
    {
        using var tmp = new TempDir();
        string folder = CopyRef(tmp);
        File.Delete(Path.Combine(folder, "model-00003-of-00004.safetensors"));
        var ex = Assert.Throws<CheckpointFormatException>(() => Checkpoint.Open(folder));
        Assert.Contains("model-00003-of-00004.safetensors", ex.Message);
    }

    [Fact]
    public void A_truncated_shard_is_named()
    {
        using var tmp = new TempDir();
        string folder = CopyRef(tmp);
        string shard = Path.Combine(folder, "model-00002-of-00004.safetensors");
        var bytes = File.ReadAllBytes(shard);
        File.WriteAllBytes(shard, bytes[..(bytes.Length - 100)]);
        var ex = Assert.Throws<CheckpointFormatException>(() => Checkpoint.Open(folder));
        Assert.Equal("model-00002-of-00004.safetensors", Path.GetFileName(ex.File));
    }

    [Fact]
    public void A_folder_without_weights_says_what_it_looked_for()
    {
        using var tmp = new TempDir();
        var ex = Assert.Throws<CheckpointNotFoundException>(() => Checkpoint.Open(tmp.Path));
        Assert.Contains("model.safetensors.index.json", ex.Message);
        string variantOnly = ModelCopies.CopyModel(TestPaths.Model("llama_variant_fp16"), tmp.Sub("v"));
        var ex2 = Assert.Throws<CheckpointNotFoundException>(() => Checkpoint.Open(variantOnly));
        Assert.Contains("--variant", ex2.Message);
    }

    /// <summary>Lays a reference model out as the HF hub cache does: blobs plus a snapshot of symlinks.</summary>
    internal static string MakeHubCache(string root, string repoId, string model, string commit = "0123456789abcdef0123456789abcdef01234567")
    {
        string repo = Path.Combine(root, "models--" + repoId.Replace("/", "--"));
        string blobs = Path.Combine(repo, "blobs");
        string snapshot = Path.Combine(repo, "snapshots", commit);
        Directory.CreateDirectory(blobs);
        Directory.CreateDirectory(snapshot);
        Directory.CreateDirectory(Path.Combine(repo, "refs"));
        File.WriteAllText(Path.Combine(repo, "refs", "main"), commit);
        int i = 0;
        foreach (var f in Directory.GetFiles(TestPaths.Model(model)))
        {
            string blob = Path.Combine(blobs, $"blob{i++:x8}");
            File.Copy(f, blob);
            File.CreateSymbolicLink(Path.Combine(snapshot, Path.GetFileName(f)), Path.Combine("..", "..", "blobs", Path.GetFileName(blob)));
        }
        return snapshot;
    }

    [Fact]
    public void A_repo_id_resolves_through_the_hub_cache_with_symlinked_snapshot_files()
    {
        using var tmp = new TempDir();
        string snapshot = MakeHubCache(tmp.Path, "tiny/llama", "llama_tied");
        string folder = ModelLocator.Locate("tiny/llama", new LocateOptions { CacheDir = tmp.Path });
        Assert.Equal(snapshot, folder);
        using var ckpt = Checkpoint.Open(folder);
        using var orig = Checkpoint.Open(TestPaths.Model("llama_tied"));
        Assert.Equal(orig.Tensors.Select(t => t.Name), ckpt.Tensors.Select(t => t.Name));
        var loc = ckpt.Get("model.norm.weight");
        var a = new byte[loc.Info.ByteLength];
        var b = new byte[loc.Info.ByteLength];
        ckpt.ReadInto(loc, a);
        orig.ReadInto(orig.Get("model.norm.weight"), b);
        Assert.Equal(b, a);
        // A commit hash works as a revision; an unknown branch is "not found locally".
        Assert.Equal(snapshot, ModelLocator.Locate("tiny/llama", new LocateOptions { CacheDir = tmp.Path, Revision = "0123456789abcdef0123456789abcdef01234567" }));
        var ex = Assert.Throws<CheckpointNotFoundException>(() => ModelLocator.Locate("tiny/llama", new LocateOptions { CacheDir = tmp.Path, Revision = "dev" }));
        Assert.Contains("not found locally", ex.Message);
        Assert.Contains(Path.Combine("refs", "dev"), ex.Message);
    }

    [Fact]
    public void A_repo_id_missing_from_the_cache_is_not_found_locally()
    {
        using var tmp = new TempDir();
        var ex = Assert.Throws<CheckpointNotFoundException>(() => ModelLocator.Locate("nobody/nothing", new LocateOptions { CacheDir = tmp.Path }));
        Assert.Contains("not found locally (offline", ex.Message);
        Assert.Contains("models--nobody--nothing", ex.Message);
    }

    [Fact]
    public void Symlinks_outside_a_cache_snapshot_are_refused()
    {
        using var tmp = new TempDir();
        string folder = CopyRef(tmp);
        string shard = Path.Combine(folder, "model-00004-of-00004.safetensors");
        string elsewhere = tmp.File("elsewhere.safetensors");
        File.Move(shard, elsewhere);
        File.CreateSymbolicLink(shard, elsewhere);
        var ex = Assert.Throws<CheckpointFormatException>(() => Checkpoint.Open(folder));
        Assert.Contains("symlink", ex.Message);
    }

    [Fact]
    public void A_snapshot_symlink_escaping_blobs_is_refused()
    {
        using var tmp = new TempDir();
        string snapshot = MakeHubCache(tmp.Path, "tiny/llama", "llama_tied");
        string shard = Path.Combine(snapshot, "model-00001-of-00004.safetensors");
        string outside = tmp.File("outside.safetensors");
        File.Copy(Path.Combine(TestPaths.Model("llama_tied"), "model-00001-of-00004.safetensors"), outside);
        File.Delete(shard);
        File.CreateSymbolicLink(shard, outside);
        var ex = Assert.Throws<CheckpointFormatException>(() => Checkpoint.Open(snapshot));
        Assert.Contains("outside this repo's blobs", ex.Message);
    }

    [Fact]
    public void Subfolders_are_resolved_and_missing_ones_named()
    {
        using var tmp = new TempDir();
        ModelCopies.CopyModel(TestPaths.Model("gpt2"), Path.Combine(tmp.Path, "sub"));
        Assert.Equal(Path.Combine(tmp.Path, "sub"), ModelLocator.Locate(tmp.Path, new LocateOptions { Subfolder = "sub" }));
        Assert.Throws<CheckpointNotFoundException>(() => ModelLocator.Locate(tmp.Path, new LocateOptions { Subfolder = "nope" }));
    }

    [Fact]
    public void Config_keeps_unknown_keys_when_saved_again()
    {
        using var tmp = new TempDir();
        string src = Path.Combine(TestPaths.Model("mistral_window"), "config.json");
        var cfg = PretrainedConfig.Load(src);
        cfg.Set("my_custom_key", System.Text.Json.Nodes.JsonValue.Create("kept"));
        cfg.Save(tmp.File("config.json"));
        var again = PretrainedConfig.Load(tmp.File("config.json"));
        Assert.Equal("kept", again.GetString("my_custom_key"));
        Assert.Equal(cfg.GetLong("sliding_window"), again.GetLong("sliding_window"));
        Assert.Equal(cfg.Values.Count, again.Values.Count);
        Assert.Equal("MistralForCausalLM", again.Architectures[0]);
    }

    [Fact]
    public void Broken_config_json_is_a_format_error_naming_the_file()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("config.json"), "{\"hidden_size\": ");
        var ex = Assert.Throws<CheckpointFormatException>(() => PretrainedConfig.Load(tmp.File("config.json")));
        Assert.Contains("config.json", ex.Message);
        File.WriteAllText(tmp.File("config.json"), "{\"hidden_size\": \"big\"}");
        var cfg = PretrainedConfig.Load(tmp.File("config.json"));
        Assert.Throws<CheckpointFormatException>(() => cfg.GetLong("hidden_size"));
        Assert.Throws<CheckpointFormatException>(() => cfg.GetLong("vocab_size"));
    }
}
