using System.Text.Json.Nodes;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// Mixtral, Gemma and Phi (shared/hf-reference/families), loaded in one process: Hugging Face's logits (1e-4) and
/// greedy tokens, their module names and shapes, and their bf16 outputs.
/// </summary>
public class FamilyReferenceTests
{
    public static TheoryData<string> Families()
    {
        var d = new TheoryData<string>();
        foreach (var m in TestPaths.FamilyNames) d.Add(m);
        return d;
    }

    public static TheoryData<string, string> FamiliesAndAttention()
    {
        var d = new TheoryData<string, string>();
        foreach (var m in TestPaths.FamilyNames)
            foreach (var a in new[] { "sdpa", "eager" })
                d.Add(m, a);
        return d;
    }

    [Theory]
    [MemberData(nameof(FamiliesAndAttention))]
    public void Forward_matches_hugging_face_logits(string name, string attn)
    {
        var r = ReferenceData.Family(name);
        var model = ReferenceModelTests.Load(r, attn: attn == "eager" ? AttnImplementation.Eager : AttnImplementation.Sdpa);
        Assert.Equal(r.Json["model_class"]!.GetValue<string>(), model.ClassName);
        CheckForward(model, r.ForwardCases, 1e-4, name);
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Greedy_generation_matches_hugging_face(string name)
    {
        var r = ReferenceData.Family(name);
        var model = ReferenceModelTests.Load(r);
        foreach (var c in r.GenerateCases)
            Assert.Equal(ReferenceData.Ints(c["sequences"]), ReferenceData.Greedy(model, c));
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void State_dict_keys_shapes_and_statistics_equal_hugging_faces(string name)
    {
        var r = ReferenceData.Family(name);
        var model = ReferenceModelTests.Load(r);
        var stats = (JsonObject)r.Json["tensor_stats_float32"]!;
        var ours = model.StateDictSlots().ToList();
        Assert.Equal(stats.Select(kv => kv.Key).Order(StringComparer.Ordinal), ours.Select(s => s.Key).Order(StringComparer.Ordinal));
        foreach (var (key, slot) in ours)
        {
            var s = stats[key]!;
            Assert.Equal(((JsonArray)s["shape"]!).Select(x => x!.GetValue<long>()), slot.Shape);
            double sum = slot.Tensor.to(ScalarType.Float64).sum().item<double>();
            Assert.True(Math.Abs(sum - s["sum"]!.GetValue<double>()) <= 1e-3 + 1e-5 * Math.Abs(sum), $"{name}: {key} sum {sum} vs {s["sum"]}");
        }
        Assert.Equal(r.Json["num_parameters"]!.GetValue<long>(), model.NamedParameters().Sum(p => p.Slot.ElementCount));
        Assert.Equal(r.Json["loaded_model_ties_lm_head"]!.GetValue<bool>(),
            ReferenceEquals(model.InputEmbeddings.Weight, model.OutputEmbeddings.Weight));
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Meta_model_keys_in_order_buffers_counts_and_footprint_equal_hugging_faces(string name)
    {
        var r = ReferenceData.Family(name);
        var meta = AutoModel.FromConfig(ShardPipe.Checkpoints.PretrainedConfig.FromFolder(r.Folder));
        Assert.Equal(((JsonObject)r.Json["tensor_stats_float32"]!).Select(kv => kv.Key), meta.StateDictSlots().Select(o => o.Key));
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "auto" });
        Assert.Equal(r.Json["dtype_auto"]!.GetValue<string>(), "torch." + ShardPipe.Checkpoints.DTypes.TorchName(ShardPipe.Modeling.Core.TorchRuntime.ToDType(model.DType)));
        Assert.Equal(r.Json["num_parameters"]!.GetValue<long>(), model.NumParameters());
        Assert.Equal(r.Json["num_parameters_exclude_embeddings"]!.GetValue<long>(), model.NumParameters(excludeEmbeddings: true));
        // 4.38's causal_mask buffer (Gemma, as Llama) is the one HF buffer we do not have; the rotary buffers are HF's.
        var hfBuffers = ((JsonArray)r.Json["buffers"]!).Where(b => b!["name"]!.GetValue<string>() != "model.causal_mask").ToList();
        Assert.Equal(hfBuffers.Select(b => b!["name"]!.GetValue<string>()), model.NamedBuffers().Select(b => b.Key));
        foreach (var fp in (JsonArray)r.Json["memory_footprint"]!)
        {
            var dt = ShardPipe.Modeling.Core.TorchRuntime.ParseFloatDType(fp!["loaded_dtype"]!.GetValue<string>());
            Assert.Equal(fp["bytes_without_buffers"]!.GetValue<long>(), model.GetMemoryFootprint(dt, returnBuffers: false));
            if (dt == ShardPipe.Checkpoints.DType.F32)
                Assert.Equal(hfBuffers.Sum(b => b!["bytes"]!.GetValue<long>()), model.GetMemoryFootprint(dt) - model.GetMemoryFootprint(dt, returnBuffers: false));
        }
    }

    [Theory]
    [InlineData("mixtral", "num_experts_per_tok", "5", "num_experts_per_tok 5")]
    [InlineData("mixtral", "num_local_experts", "0", "num_local_experts 0")]
    [InlineData("phi", "partial_rotary_factor", "1.5", "partial_rotary_factor 1.5")]
    [InlineData("phi", "qk_layernorm", "true", "qk_layernorm")]
    [InlineData("gemma", "num_key_value_heads", "3", "num_key_value_heads 3")]
    public void A_bad_family_config_is_a_typed_error_naming_the_field(string name, string field, string value, string expected)
    {
        using var tmp = new TempDir();
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.Families, name, "config.json")))!.AsObject();
        config[field] = JsonNode.Parse(value);
        File.WriteAllText(tmp.File("config.json"), config.ToJsonString());
        var e = Assert.ThrowsAny<ShardPipeException>(() => AutoModel.FromConfig(ShardPipe.Checkpoints.PretrainedConfig.FromFolder(tmp.Path)));
        Assert.Contains(expected, e.Message);
        Assert.Contains("config.json", e.Message);
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Native_dtype_outputs_are_close_to_hugging_faces(string name)
    {
        var r = ReferenceData.Family(name);
        if (r.Json["native_dtype"] is not JsonObject native || !native["supported"]!.GetValue<bool>()) return; // fp32, or HF could not run it
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "auto" });
        Assert.Equal(native["dtype"]!.GetValue<string>() == "bfloat16" ? ScalarType.BFloat16 : ScalarType.Float16, model.DType);
        // bf16 keeps 8 bits of mantissa; kernels differ between torch 1.13 and libtorch 2.10 in accumulation order.
        CheckForward(model, ((JsonArray)native["forward"]!).Select(n => n!), 0.05, name + " native", argmaxSlack: 1);
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Half_the_blocks_on_disk_give_hugging_faces_logits_and_tokens(string name)
    {
        var r = ReferenceData.Family(name);
        var meta = AutoModel.FromConfig(ShardPipe.Checkpoints.PretrainedConfig.FromFolder(r.Folder));
        using var tmp = new TempDir();
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "float32", DeviceMapDict = DiskOffloadTests.HalfOnDisk(meta), OffloadFolder = tmp.Path });
        try
        {
            Assert.True(model.Offload is { Bytes: > 0 });
            string last = meta.LayerPath(meta.NumLayers - 1) + ".";
            Assert.DoesNotContain(model.NamedParameters(), p => p.Key.StartsWith(last, StringComparison.Ordinal) && p.Slot.IsMaterialised);
            CheckForward(model, r.ForwardCases, 1e-4, name + " with blocks on disk");
            foreach (var c in r.GenerateCases)
                Assert.Equal(ReferenceData.Ints(c["sequences"]), ReferenceData.Greedy(model, c));
        }
        finally { model.Release(); }
    }

    [Fact]
    public void A_generated_mixtral_loads_every_key_and_counts_only_chosen_experts_as_active()
    {
        using var tmp = new TempDir();
        var spec = new ShardPipe.Checkpoints.Synthetic.SyntheticLlamaSpec { NumLocalExperts = 4, NumExpertsPerTok = 2, MaxShardSize = "300KB" };
        ShardPipe.Checkpoints.Synthetic.SyntheticLlama.Write(tmp.Path, spec);
        var model = PreTrainedModel.FromPretrained(tmp.Path, new FromPretrainedOptions { DType = "bfloat16" });
        Assert.Equal("MixtralForCausalLM", model.ClassName);
        Assert.All(model.NamedParameters(), p => Assert.True(p.Slot.IsMaterialised, p.Key));
        long expert = 3L * spec.HiddenSize * spec.IntermediateSize;
        Assert.Equal(model.NumParameters() - spec.NumLayers * 2 * expert, model.ActiveParameters());
        var tokens = TokenGenerator.Greedy(model, new[] { new long[] { 5, 6, 7 } }, null, new GenerationOptions { MaxNewTokens = 4, IgnoreEos = true }).Sequences;
        Assert.Equal(7, tokens[0].Length);
    }

    internal static void CheckForward(CausalLMModel model, IEnumerable<JsonNode> cases, double tol, string what, int argmaxSlack = 0)
    {
        int rows = 0, sameArgmax = 0;
        foreach (var c in cases)
        {
            var ids = ReferenceData.Ints(c["input_ids"]);
            var mask = c["attention_mask"] is JsonArray ? ReferenceData.Ints(c["attention_mask"]) : null;
            var pos = c["position_ids"] is JsonArray ? ReferenceData.Ints(c["position_ids"]) : null;
            using var scope = NewDisposeScope();
            var logits = model.Forward(ReferenceModelTests.Tensor2(ids), mask is null ? null : ReferenceModelTests.Tensor2(mask),
                pos is null ? null : ReferenceModelTests.Tensor2(pos));
            var expected = ReferenceData.Doubles(c["last_logits"]!);
            var argmax = ((JsonArray)c["argmax"]!).Select(x => x!.GetValue<long>()).ToArray();
            for (int b = 0; b < ids.Length; b++)
            {
                var row = logits[b, ids[b].Length - 1].data<float>().ToArray();
                ReferenceModelTests.AssertClose(expected[b], row, tol, $"{what}/{c["name"]} row {b}");
                rows++;
                if (argmax[b] == Array.IndexOf(row, row.Max())) sameArgmax++;
            }
            if (c["logits_all"] is JsonArray all)
            {
                var expectedAll = ReferenceData.Doubles(all[0]!);
                for (int t = 0; t < expectedAll.Length; t++)
                    ReferenceModelTests.AssertClose(expectedAll[t], logits[0, t].data<float>().ToArray(), tol, $"{what}/{c["name"]} t={t}");
            }
        }
        Assert.True(rows > 0);
        Assert.True(sameArgmax >= rows - argmaxSlack, $"{what}: argmax agreed on {sameArgmax} of {rows} rows");
    }
}
