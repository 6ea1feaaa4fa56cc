using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;
using ShardPipe.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// prune_heads and config.pruned_heads against transformers' pruned GPT-2 (the public gpt2 after
/// <c>prune_heads({0: [1, 2], 1: [0]})</c>, saved and reloaded), and what pruning means beyond that fixture: a pruned
/// head contributes nothing, as if its rows of c_proj were zero.
/// </summary>
public class HeadPruningTests
{
    private static Dictionary<int, int[]> ReferenceHeads() => new() { [0] = new[] { 1, 2 }, [1] = new[] { 0 } };
    private static ReferenceData Pruned() => new("gpt2_pruned", TestPaths.PrunedGpt2);
    private static CausalLMModel Load(string folder, AttnImplementation attn = AttnImplementation.Sdpa) =>
        PreTrainedModel.FromPretrained(folder, new FromPretrainedOptions { DType = "float32", AttnImplementation = attn });

    private static void AssertGreedyMatches(CausalLMModel model, ReferenceData r)
    {
        foreach (var c in r.GenerateCases)
            Assert.Equal(ReferenceData.Ints(c["sequences"]), ReferenceData.Greedy(model, c));
    }

    /// <summary>Every state-dict tensor of <paramref name="actual"/> equals <paramref name="expected"/>'s, key for key, bit for bit.</summary>
    private static void AssertSameTensors(CausalLMModel expected, CausalLMModel actual)
    {
        var want = expected.StateDictSlots().ToList();
        var got = actual.StateDictSlots().ToList();
        Assert.Equal(want.Select(w => w.Key), got.Select(g => g.Key));
        foreach (var ((key, w), (_, g)) in want.Zip(got))
        {
            Assert.Equal(w.Shape, g.Shape);
            Assert.True(w.Tensor.eq(g.Tensor).all().item<bool>(), $"{key} differs");
        }
    }

    private static JsonNode PrunedHeadsOf(CausalLMModel model) => model.Config.Values[HeadPruning.ConfigKey]!;

    [Theory]
    [InlineData(AttnImplementation.Sdpa)]
    [InlineData(AttnImplementation.Eager)]
    public void The_pruned_gpt2_loads_with_its_pruned_shapes_and_gives_hugging_faces_logits(AttnImplementation attn)
    {
        var r = Pruned();
        var model = Load(r.Folder, attn);
        var layer0 = ((Gpt2LMHeadModel)model).Transformer.H[0].Attn;
        Assert.Equal(2, layer0.NumHeads);
        Assert.Equal(new[] { 1, 2 }, layer0.PrunedHeads.Order());
        ReferenceModelTests.AssertForwardMatches(model, r, "gpt2_pruned");
    }

    [Fact]
    public void The_pruned_gpt2_generates_hugging_faces_greedy_tokens() => AssertGreedyMatches(Load(TestPaths.PrunedGpt2), Pruned());

    [Fact]
    public void The_pruned_gpt2_counts_parameters_footprint_buffers_and_tensors_as_hugging_face()
    {
        var r = Pruned();
        var model = Load(r.Folder);
        Assert.Equal(r.Json["num_parameters"]!.GetValue<long>(), model.NumParameters());
        Assert.Equal(r.Json["num_parameters_exclude_embeddings"]!.GetValue<long>(), model.NumParameters(excludeEmbeddings: true));
        var footprint = r.Json["memory_footprint"]![0]!;
        Assert.Equal(footprint["bytes"]!.GetValue<long>(), model.GetMemoryFootprint());
        Assert.Equal(footprint["bytes_without_buffers"]!.GetValue<long>(), model.GetMemoryFootprint(returnBuffers: false));
        Assert.Equal(((JsonArray)r.Json["buffers"]!).Select(b => b!["name"]!.GetValue<string>()), model.NamedBuffers().Select(b => b.Key));
        var stats = (JsonObject)r.Json["tensor_stats_float32"]!;
        var ours = model.StateDictSlots().ToList();
        Assert.Equal(stats.Select(kv => kv.Key), ours.Select(o => o.Key));
        foreach (var (key, slot) in ours)
        {
            Assert.Equal(((JsonArray)stats[key]!["shape"]!).Select(d => d!.GetValue<long>()), slot.Shape);
            double sum = slot.Tensor.to(ScalarType.Float64).sum().item<double>();
            Assert.True(Math.Abs(sum - stats[key]!["sum"]!.GetValue<double>()) <= 1e-6 * Math.Max(1, Math.Abs(sum)), $"{key}: sum {sum}");
        }
    }

    [Fact]
    public void Pruning_the_public_gpt2_gives_the_reference_pruned_model()
    {
        var model = Load(TestPaths.Model("gpt2"));
        model.PruneHeads(ReferenceHeads());
        Assert.Equal("{\"0\":[1,2],\"1\":[0]}", PrunedHeadsOf(model).ToJsonString());
        AssertSameTensors(Load(TestPaths.PrunedGpt2), model);
        ReferenceModelTests.AssertForwardMatches(model, Pruned(), "gpt2 pruned in place");
        AssertGreedyMatches(model, Pruned());
    }

    [Fact]
    public void Repeated_calls_accumulate_and_skip_heads_pruned_before()
    {
        var model = Load(TestPaths.Model("gpt2"));
        var attn = ((Gpt2LMHeadModel)model).Transformer.H[0].Attn;
        model.PruneHeads(new Dictionary<int, int[]> { [0] = new[] { 2 } });
        Assert.Equal(3, attn.NumHeads);
        Assert.Equal("{\"0\":[2]}", PrunedHeadsOf(model).ToJsonString());
        // Head 1 is still row 1; head 2 is gone; indices stay those of the unpruned layer.
        model.PruneHeads(new Dictionary<int, int[]> { [0] = new[] { 1, 2, 2 }, [1] = new[] { 0 } });
        Assert.Equal(2, attn.NumHeads);
        Assert.Equal("{\"0\":[1,2],\"1\":[0]}", PrunedHeadsOf(model).ToJsonString());
        AssertSameTensors(Load(TestPaths.PrunedGpt2), model);

        var other = Load(TestPaths.Model("gpt2"));
        other.PruneHeads(new Dictionary<int, int[]> { [1] = new[] { 0 }, [0] = new[] { 1 } });
        other.PruneHeads(new Dictionary<int, int[]> { [0] = new[] { 2 } }); // head 2 now sits at row 1 (head 1 went before it)
        AssertSameTensors(Load(TestPaths.PrunedGpt2), other);
        other.PruneHeads(new Dictionary<int, int[]> { [0] = new[] { 1, 2 } }); // nothing left to prune there
        AssertSameTensors(Load(TestPaths.PrunedGpt2), other);
    }

    [Fact]
    public void Prune_save_load_round_trip_writes_hugging_faces_files_and_keeps_the_outputs()
    {
        using var tmp = new TempDir();
        var r = Pruned();
        var model = Load(TestPaths.Model("gpt2"));
        model.PruneHeads(ReferenceHeads());
        PreTrainedModel.SavePretrained(model, tmp.Path, new SaveOptions { MaxShardSize = r.Json["max_shard_size"]!.GetValue<string>() });

        var saved = PretrainedConfig.FromFolder(tmp.Path);
        Assert.Equal(JsonNode.Parse("{\"0\":[1,2],\"1\":[0]}")!.ToJsonString(), saved.Values[HeadPruning.ConfigKey]!.ToJsonString());
        Assert.Equal(File.ReadAllText(Path.Combine(r.Folder, "model.safetensors.index.json")), File.ReadAllText(Path.Combine(tmp.Path, "model.safetensors.index.json")));
        foreach (var shard in ((JsonArray)r.Json["shard_files"]!).Select(s => s!.GetValue<string>()))
            Assert.True(File.ReadAllBytes(Path.Combine(r.Folder, shard)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(tmp.Path, shard))), $"{shard} differs from transformers' bytes");

        var reloaded = Load(tmp.Path);
        Assert.Equal(2, ((Gpt2LMHeadModel)reloaded).Transformer.H[0].Attn.NumHeads);
        ReferenceModelTests.AssertForwardMatches(reloaded, r, "gpt2 pruned, saved, reloaded");
        AssertGreedyMatches(reloaded, r);

        // Pruning the reloaded model further accumulates on the saved config's heads.
        reloaded.PruneHeads(new Dictionary<int, int[]> { [1] = new[] { 3 } });
        Assert.Equal("{\"0\":[1,2],\"1\":[0,3]}", PrunedHeadsOf(reloaded).ToJsonString());
        Assert.Equal(2, ((Gpt2LMHeadModel)reloaded).Transformer.H[1].Attn.NumHeads);
    }

    /// <summary>The unpruned model with the given heads' rows of c_proj zeroed: the same function as pruning them.</summary>
    private static CausalLMModel WithHeadsSilenced(Dictionary<int, int[]> heads)
    {
        var model = Load(TestPaths.Model("gpt2"));
        long hd = model.Config.GetLong("n_embd") / model.Config.GetLong("n_head");
        using var noGrad = no_grad();
        foreach (var (layer, hs) in heads)
            foreach (int h in hs)
                model.GetParameterOrBuffer($"transformer.h.{layer}.attn.c_proj.weight").narrow(0, h * hd, hd).zero_();
        return model;
    }

    [Theory]
    [InlineData("{\"0\":[0,3],\"1\":[1]}")]
    [InlineData("{\"1\":[3,2,0]}")]
    [InlineData("{\"0\":[0,1,2,3]}")] // every head of a layer: only c_proj's bias is left (its keys still fill the cache)
    public void Pruned_heads_contribute_nothing_as_if_their_output_rows_were_zero(string json)
    {
        var heads = JsonNode.Parse(json)!.AsObject().ToDictionary(kv => int.Parse(kv.Key), kv => kv.Value!.AsArray().Select(h => h!.GetValue<int>()).ToArray());
        var pruned = Load(TestPaths.Model("gpt2"));
        pruned.PruneHeads(heads);
        var silenced = WithHeadsSilenced(heads);
        var r = new ReferenceData("gpt2");
        foreach (var c in r.ForwardCases)
        {
            var ids = ReferenceModelTests.Tensor2(ReferenceData.Ints(c["input_ids"]));
            var mask = c["attention_mask"] is JsonArray ? ReferenceModelTests.Tensor2(ReferenceData.Ints(c["attention_mask"])) : null;
            using var scope = NewDisposeScope();
            var a = pruned.Forward(ids, mask);
            var b = silenced.Forward(ids, mask);
            double worst = (a - b).abs().max().item<float>();
            Assert.True(worst < 1e-5, $"{json} {c["name"]}: max |Δ| {worst}");
        }
        foreach (var c in r.GenerateCases)
            Assert.Equal(ReferenceData.Greedy(silenced, c), ReferenceData.Greedy(pruned, c));
    }

    [Fact]
    public void Random_prunes_in_two_calls_equal_silencing_the_same_heads()
    {
        var random = new Random(34);
        var r = new ReferenceData("gpt2");
        var c = r.ForwardCases.First(f => f["attention_mask"] is JsonArray);
        using var ids = ReferenceModelTests.Tensor2(ReferenceData.Ints(c["input_ids"]));
        using var mask = ReferenceModelTests.Tensor2(ReferenceData.Ints(c["attention_mask"]));
        int prunedHeads = 0;
        for (int trial = 0; trial < 6; trial++)
        {
            // Two calls with overlapping random heads per layer; the union is what ends up pruned.
            Dictionary<int, int[]> Draw() => Enumerable.Range(0, 2).Where(_ => random.Next(3) > 0)
                .ToDictionary(l => l, _ => Enumerable.Range(0, random.Next(1, 4)).Select(_ => random.Next(4)).ToArray());
            var first = Draw();
            var second = Draw();
            var union = first.Keys.Union(second.Keys).ToDictionary(l => l,
                l => first.GetValueOrDefault(l, Array.Empty<int>()).Union(second.GetValueOrDefault(l, Array.Empty<int>())).ToArray());
            var pruned = Load(TestPaths.Model("gpt2"));
            pruned.PruneHeads(first);
            pruned.PruneHeads(second);
            prunedHeads += union.Values.Sum(h => h.Distinct().Count());
            foreach (var (layer, heads) in union)
                Assert.Equal(4 - heads.Distinct().Count(), ((Gpt2LMHeadModel)pruned).Transformer.H[layer].Attn.NumHeads);
            using var scope = NewDisposeScope();
            double worst = (pruned.Forward(ids, mask) - WithHeadsSilenced(union).Forward(ids, mask)).abs().max().item<float>();
            Assert.True(worst < 1e-5, $"trial {trial}: max |Δ| {worst}");
        }
        Assert.True(prunedHeads >= 12, $"the draws pruned only {prunedHeads} heads");
    }

    [Fact]
    public void The_meta_model_and_the_planner_size_pruned_layers_from_the_config()
    {
        var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(TestPaths.PrunedGpt2));
        using var ckpt = Checkpoint.Open(TestPaths.PrunedGpt2);
        foreach (var (key, slot) in meta.StateDictSlots().Where(s => ckpt.Contains(s.Key)))
            Assert.Equal(ckpt.Get(key).Info.Shape, slot.Shape);
        Assert.All(meta.StateDictSlots(), s => Assert.False(s.Slot.IsMaterialised));
        var sizes = ModuleSizes.Compute(meta.ToPlacementTree(), DType.F32);
        foreach (var prefix in new[] { "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_attn", "transformer.h.1.mlp" })
        {
            long bytes = ckpt.Tensors.Where(t => t.Name.StartsWith(prefix + ".", StringComparison.Ordinal)).Sum(t => t.Info.Shape.Aggregate(4L, (a, d) => a * d));
            Assert.Equal(bytes, sizes[prefix]);
        }
        Assert.Equal(Pruned().Json["memory_footprint"]![0]!["bytes_without_buffers"]!.GetValue<long>(), meta.GetMemoryFootprint(DType.F32, returnBuffers: false));
    }

    [Fact]
    public void Families_without_head_pruning_refuse_it_and_configs_that_ask_for_it()
    {
        var llama = Load(TestPaths.Model("llama_untied"));
        var e = Assert.Throws<UnsupportedException>(() => llama.PruneHeads(new Dictionary<int, int[]> { [0] = new[] { 1 } }));
        Assert.Contains("LlamaForCausalLM", e.Message);
        Assert.False(llama.Config.Has(HeadPruning.ConfigKey));

        using var tmp = new TempDir();
        string folder = ModelCopies.CopyModel(TestPaths.Model("qwen2"), tmp.Sub("qwen2"));
        var config = PretrainedConfig.FromFolder(folder);
        config.Set(HeadPruning.ConfigKey, JsonNode.Parse("{\"0\": [1]}"));
        config.Save(Path.Combine(folder, CheckpointNames.Config));
        var refused = Assert.Throws<UnsupportedException>(() => Load(folder));
        Assert.Contains("config.json", refused.Message);
        Assert.Contains("pruned_heads", refused.Message);

        config.Set(HeadPruning.ConfigKey, JsonNode.Parse("{\"0\": []}")); // still makes init_weights call prune_heads
        config.Save(Path.Combine(folder, CheckpointNames.Config));
        Assert.Throws<UnsupportedException>(() => Load(folder));

        config.Set(HeadPruning.ConfigKey, new JsonObject()); // what every config carries by default
        config.Save(Path.Combine(folder, CheckpointNames.Config));
        Assert.Equal(config.GetLong("num_hidden_layers"), Load(folder).NumLayers);
    }

    [Fact]
    public void Bad_layers_and_heads_are_refused_before_anything_changes()
    {
        var model = Load(TestPaths.Model("gpt2"));
        var layer0 = ((Gpt2LMHeadModel)model).Transformer.H[0].Attn;
        Assert.Contains("layer 5", Assert.Throws<InvalidInputException>(() => model.PruneHeads(new Dictionary<int, int[]> { [5] = new[] { 0 } })).Message);
        Assert.Contains("head 4", Assert.Throws<InvalidInputException>(() => model.PruneHeads(new Dictionary<int, int[]> { [0] = new[] { 1 }, [1] = new[] { 4 } })).Message);
        Assert.Contains("head -1", Assert.Throws<InvalidInputException>(() => model.PruneHeads(new Dictionary<int, int[]> { [0] = new[] { -1 } })).Message);
        Assert.Equal(4, layer0.NumHeads);
        Assert.False(model.Config.Has(HeadPruning.ConfigKey));
        ReferenceModelTests.AssertForwardMatches(model, new ReferenceData("gpt2"), "gpt2 after refused prunes");
    }

    [Theory]
    [InlineData("{\"0\": [7]}", "head 7")]
    [InlineData("{\"2\": [0]}", "layer 2")]
    [InlineData("{\"x\": [0]}", "layer 'x'")]
    [InlineData("{\"0\": 1}", "list of head indices")]
    [InlineData("{\"0\": [\"1\"]}", "not an integer")]
    [InlineData("[0, 1]", "must be an object")]
    public void A_config_with_impossible_pruned_heads_is_a_format_error_naming_file_and_field(string prunedHeads, string expected)
    {
        using var tmp = new TempDir();
        string folder = ModelCopies.CopyModel(TestPaths.Model("gpt2"), tmp.Sub("gpt2"));
        var config = PretrainedConfig.FromFolder(folder);
        config.Set(HeadPruning.ConfigKey, JsonNode.Parse(prunedHeads));
        config.Save(Path.Combine(folder, CheckpointNames.Config));
        var e = Assert.Throws<CheckpointFormatException>(() => AutoModel.FromConfig(PretrainedConfig.FromFolder(folder)));
        Assert.Contains("config.json", e.Message);
        Assert.Contains("pruned_heads", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Find_pruneable_heads_and_indices_counts_rows_after_heads_pruned_before()
    {
        var (heads, keep) = HeadPruning.FindPruneableHeadsAndIndices(new[] { 3, 1, 5 }, currentHeads: 4, headSize: 2, alreadyPruned: new HashSet<int> { 1, 2 });
        Assert.Equal(new[] { 3, 5 }, heads.Order());
        // Six heads originally; 1 and 2 gone, so rows are heads 0, 3, 4, 5: dropping 3 and 5 keeps rows 0 and 2.
        Assert.Equal(new long[] { 0, 1, 4, 5 }, keep);
    }
}
