using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Checkpoints;

public class ShardingTests
{
    private static TensorSource T(string name, long floats) =>
        new(name, DType.F32, new[] { floats }, dst => dst.Fill((byte)name.Length));

    [Fact]
    public void Greedy_sharding_starts_a_new_shard_only_when_the_next_tensor_would_overflow()
    {
        var shards = ShardedWriter.PlanShards(new[] { T("a", 10), T("b", 10), T("c", 5), T("d", 1) }, 80);
        Assert.Equal(new[] { new[] { "a", "b" }, new[] { "c", "d" } }, shards.Select(s => s.Select(t => t.Name).ToArray()).ToArray());
    }

    [Fact]
    public void A_tensor_bigger_than_the_limit_gets_its_own_shard()
    {
        var shards = ShardedWriter.PlanShards(new[] { T("small", 1), T("huge", 100), T("tail", 1) }, 50);
        Assert.Equal(new[] { new[] { "small" }, new[] { "huge" }, new[] { "tail" } }, shards.Select(s => s.Select(t => t.Name).ToArray()).ToArray());
        var first = ShardedWriter.PlanShards(new[] { T("huge", 100), T("x", 1) }, 50);
        Assert.Equal(2, first.Count);
    }

    [Fact]
    public void Exact_fit_stays_in_one_shard()
    {
        Assert.Single(ShardedWriter.PlanShards(new[] { T("a", 5), T("b", 5) }, 40));
    }

    [Fact]
    public void Sharded_save_names_files_and_index_like_save_pretrained_including_variant()
    {
        using var tmp = new TempDir();
        var tensors = new[] { T("a", 100), T("b", 100), T("c", 100) };
        var names = ShardedWriter.Save(tmp.Path, tensors, 400);
        Assert.Equal(new[] { "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json" }, names);
        var v = ShardedWriter.Save(tmp.Sub("v"), tensors, 400, "fp16");
        Assert.Equal("model.fp16-00001-of-00003.safetensors", v[0]);
        Assert.Equal("model.safetensors.index.fp16.json", v[^1]);
        var single = ShardedWriter.Save(tmp.Sub("s"), tensors, 10_000, "fp16");
        Assert.Equal(new[] { "model.fp16.safetensors" }, single);

        using var ckpt = Checkpoint.Open(tmp.Path);
        Assert.Equal(1200, ckpt.Index!.TotalSize);
        Assert.Equal(3, ckpt.ShardFiles.Count);
        using var vck = Checkpoint.Open(tmp.Sub("v"), "fp16");
        Assert.Equal(3, vck.Tensors.Count);
        Assert.Throws<CheckpointNotFoundException>(() => Checkpoint.Open(tmp.Sub("v")));
    }

    [Fact]
    public void Resaving_a_shard_count_drops_stale_shards()
    {
        using var tmp = new TempDir();
        ShardedWriter.Save(tmp.Path, new[] { T("a", 100), T("b", 100), T("c", 100) }, 400);
        ShardedWriter.Save(tmp.Path, new[] { T("a", 100), T("b", 100), T("c", 100) }, 100_000);
        Assert.Equal(new[] { "model.safetensors" }, Directory.GetFiles(tmp.Path).Select(Path.GetFileName).ToArray());
    }

    /// <summary>State-dict order as HF iterates it; reference.json lists the float32 model's state dict in that order.</summary>
    internal static List<string> StateDictOrder(string model)
    {
        var reference = JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.Model(model), "reference.json")))!;
        return ((JsonObject)reference["tensor_stats_float32"]!).Select(kv => kv.Key).ToList();
    }

    [Theory]
    [MemberData(nameof(ReferenceModels))]
    public void Rewriting_a_reference_checkpoint_gives_the_same_index_and_identical_tensors(string model)
    {
        using var tmp = new TempDir();
        string folder = TestPaths.Model(model);
        var reference = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "reference.json")))!;
        string? variant = reference["variant"]?.GetValue<string>();
        long maxShard = ByteSize.Parse(reference["max_shard_size"]!.GetValue<string>());
        using var original = Checkpoint.Open(folder, variant);
        var order = StateDictOrder(model).Where(original.Contains).ToList();
        Assert.Equal(original.Tensors.Count, order.Count);
        var sources = order.Select(name =>
        {
            var loc = original.Get(name);
            return new TensorSource(name, loc.Info.DType, loc.Info.Shape, dst => original.ReadInto(loc, dst));
        }).ToList();
        ShardedWriter.Save(tmp.Path, sources, maxShard, variant);

        string indexName = CheckpointNames.SafeIndex(variant);
        Assert.Equal(File.ReadAllText(Path.Combine(folder, indexName)), File.ReadAllText(Path.Combine(tmp.Path, indexName)));
        using var copy = Checkpoint.Open(tmp.Path, variant);
        foreach (var t in original.Tensors)
        {
            var c = copy.Get(t.Name);
            Assert.Equal(t.Shard, c.Shard);
            var a = new byte[t.Info.ByteLength];
            var b = new byte[c.Info.ByteLength];
            original.ReadInto(t, a);
            copy.ReadInto(c, b);
            Assert.Equal(a, b);
        }
        foreach (var shard in original.ShardFiles)
            Assert.Equal(File.ReadAllBytes(Path.Combine(folder, shard)), File.ReadAllBytes(Path.Combine(tmp.Path, shard)));
    }

    public static TheoryData<string> ReferenceModels()
    {
        var data = new TheoryData<string>();
        foreach (var m in TestPaths.ModelNames) data.Add(m);
        return data;
    }
}
