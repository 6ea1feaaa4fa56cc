using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Checkpoints;
using ShardPipe.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>from_pretrained / save_pretrained semantics beyond plain loading.</summary>
public class LoadingBehaviourTests
{
    private static float[] LastLogits(CausalLMModel m, long[] ids)
    {
        using var scope = NewDisposeScope();
        return m.Forward(tensor(ids, new long[] { 1, ids.Length }), lastOnly: true)[0, 0].data<float>().ToArray();
    }

    private static readonly long[] Prompt = { 5, 17, 42, 9, 3 };

    [Theory]
    [MemberData(nameof(ShardingTests.ReferenceModels), MemberType = typeof(ShardingTests))]
    public void Module_tree_keys_and_shapes_equal_the_hf_state_dict_in_order(string name)
    {
        var r = new ReferenceData(name);
        var model = AutoModel.FromConfig(PretrainedConfig.FromFolder(r.Folder));
        var stats = (JsonObject)r.Json["tensor_stats_float32"]!;
        var ours = model.StateDictSlots().ToList();
        Assert.Equal(stats.Select(kv => kv.Key), ours.Select(o => o.Key));
        foreach (var (key, slot) in ours)
            Assert.Equal(((JsonArray)stats[key]!["shape"]!).Select(d => d!.GetValue<long>()), slot.Shape);
        Assert.All(ours, o => Assert.False(o.Slot.IsMaterialised)); // built on the meta device: no memory yet
    }

    [Theory]
    [MemberData(nameof(ShardingTests.ReferenceModels), MemberType = typeof(ShardingTests))]
    public void Parameter_counts_footprint_dtype_auto_and_tying_match_hugging_face(string name)
    {
        var r = new ReferenceData(name);
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { Variant = r.Variant, DType = "auto" });
        Assert.Equal(r.Json["dtype_auto"]!.GetValue<string>(), "torch." + DTypes.TorchName(TorchRuntime.ToDType(model.DType)));
        Assert.Equal(r.Json["num_parameters"]!.GetValue<long>(), model.NumParameters());
        Assert.Equal(r.Json["num_parameters_exclude_embeddings"]!.GetValue<long>(), model.NumParameters(excludeEmbeddings: true));
        bool ties = r.Json["loaded_model_ties_lm_head"]!.GetValue<bool>();
        Assert.Equal(ties, ReferenceEquals(model.InputEmbeddings.Weight, model.OutputEmbeddings.Weight));
        // 4.38 Llama's causal_mask buffer is the one HF buffer we do not have; every other buffer is counted as HF counts it.
        var hfBuffers = ((JsonArray)r.Json["buffers"]!).Where(b => b!["name"]!.GetValue<string>() != "model.causal_mask").ToList();
        Assert.Equal(hfBuffers.Select(b => b!["name"]!.GetValue<string>()), model.NamedBuffers().Select(b => b.Key));
        foreach (var fp in (JsonArray)r.Json["memory_footprint"]!)
        {
            var dt = TorchRuntime.ParseFloatDType(fp!["loaded_dtype"]!.GetValue<string>());
            long buffers = model.GetMemoryFootprint(dt) - model.GetMemoryFootprint(dt, returnBuffers: false);
            Assert.Equal(fp["bytes_without_buffers"]!.GetValue<long>(), model.GetMemoryFootprint(dt, returnBuffers: false));
            if (dt == DType.F32)
                Assert.Equal(hfBuffers.Sum(b => b!["bytes"]!.GetValue<long>()), buffers);
        }
        Assert.Equal(model.GetMemoryFootprint(), model.GetMemoryFootprint(TorchRuntime.ToDType(model.DType)));
    }

    [Fact]
    public void Bfloat16_greedy_generation_gives_hugging_faces_tokens_where_its_float32_and_bfloat16_agree()
    {
        var r = new ReferenceData("llama_bf16");
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "auto" });
        Assert.Equal(ScalarType.BFloat16, model.DType);
        int compared = 0;
        var fp32 = r.GenerateCases.ToDictionary(c => c["name"]!.GetValue<string>(), c => ReferenceData.Ints(c["sequences"]));
        foreach (var c in ((JsonArray)r.Json["native_dtype"]!["generate"]!).Select(n => n!))
        {
            var expected = ReferenceData.Ints(c["sequences"]);
            if (!fp32.TryGetValue(c["name"]!.GetValue<string>(), out var full) || !full.Zip(expected).All(p => p.First.SequenceEqual(p.Second))) continue;
            Assert.Equal(expected, ReferenceData.Greedy(model, c)); // decode steps run the bf16 kernel (one row each)
            compared++;
        }
        Assert.True(compared > 0, "no generation case where HF's float32 and bfloat16 agree");
    }

    [Fact]
    public void Bfloat16_native_outputs_are_close_to_hugging_face_bfloat16()
    {
        var r = new ReferenceData("llama_bf16");
        var native = r.Json["native_dtype"]!;
        Assert.True(native["supported"]!.GetValue<bool>());
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "auto" });
        Assert.Equal(ScalarType.BFloat16, model.DType);
        int sameArgmax = 0, rows = 0;
        foreach (var c in ((JsonArray)native["forward"]!).Select(n => n!))
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
                // bf16 keeps 8 bits of mantissa; kernels differ between torch 1.13 and libtorch 2.10 in accumulation order.
                ReferenceModelTests.AssertClose(expected[b], row, 0.05, $"bf16 {c["name"]} row {b}");
                rows++;
                if (argmax[b] == Array.IndexOf(row, row.Max())) sameArgmax++;
            }
        }
        Assert.True(sameArgmax >= rows - 1, $"argmax agreed on {sameArgmax} of {rows} rows");
    }

    [Theory]
    [MemberData(nameof(ShardingTests.ReferenceModels), MemberType = typeof(ShardingTests))]
    public void Save_pretrained_reproduces_the_reference_index_and_reloads_to_the_same_outputs(string name)
    {
        var r = new ReferenceData(name);
        using var tmp = new TempDir();
        string stored = r.Json["saved_dtype"]!.GetValue<string>();
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { Variant = r.Variant, DType = stored });
        PreTrainedModel.SavePretrained(model, tmp.Path, new SaveOptions { MaxShardSize = r.Json["max_shard_size"]!.GetValue<string>(), Variant = r.Variant });
        string index = r.Json["index_file"]!.GetValue<string>();
        Assert.Equal(File.ReadAllText(Path.Combine(r.Folder, index)), File.ReadAllText(Path.Combine(tmp.Path, index)));
        foreach (var shard in ((JsonArray)r.Json["shard_files"]!).Select(s => s!.GetValue<string>()))
            Assert.Equal(File.ReadAllBytes(Path.Combine(r.Folder, shard)), File.ReadAllBytes(Path.Combine(tmp.Path, shard)));
        var saved = PretrainedConfig.FromFolder(tmp.Path);
        Assert.Equal(stored, saved.TorchDtype);
        Assert.True(File.Exists(Path.Combine(tmp.Path, "generation_config.json")));
        var a = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { Variant = r.Variant });
        var b = PreTrainedModel.FromPretrained(tmp.Path, new FromPretrainedOptions { Variant = r.Variant });
        Assert.Equal(LastLogits(a, Prompt), LastLogits(b, Prompt));
    }

    [Fact]
    public void A_base_model_checkpoint_loads_into_the_head_model()
    {
        using var tmp = new TempDir();
        var full = PreTrainedModel.FromPretrained(TestPaths.Model("llama_tied"));
        // Strip "model." the way a LlamaModel (base) checkpoint is keyed.
        var baseState = full.StateDictSlots().Where(s => s.Key.StartsWith("model.", StringComparison.Ordinal))
            .DistinctBy(s => s.Slot).ToDictionary(s => s.Key["model.".Length..], s => s.Slot.Tensor);
        var loaded = PreTrainedModel.FromPretrained(TestPaths.Model("llama_tied"), new FromPretrainedOptions { StateDict = baseState }, out var info);
        Assert.Empty(info.MissingKeys);
        Assert.Empty(info.UnexpectedKeys);
        Assert.Equal(LastLogits(full, Prompt), LastLogits(loaded, Prompt));
    }

    [Fact]
    public void A_tied_model_takes_its_weight_from_whichever_side_the_checkpoint_has()
    {
        var full = PreTrainedModel.FromPretrained(TestPaths.Model("llama_tied"));
        var state = full.StateDictSlots().ToDictionary(s => s.Key, s => s.Slot.Tensor);
        state.Remove("model.embed_tokens.weight"); // only lm_head.weight remains
        var loaded = PreTrainedModel.FromPretrained(TestPaths.Model("llama_tied"), new FromPretrainedOptions { StateDict = state }, out var info);
        Assert.Empty(info.MissingKeys);
        Assert.Same(loaded.InputEmbeddings.Weight, loaded.OutputEmbeddings.Weight);
        Assert.Equal(LastLogits(full, Prompt), LastLogits(loaded, Prompt));
    }

    [Fact]
    public void Legacy_gamma_and_beta_names_are_renamed()
    {
        var full = PreTrainedModel.FromPretrained(TestPaths.Model("gpt2"));
        var state = full.StateDictSlots().DistinctBy(s => s.Slot).ToDictionary(
            s => s.Key.Replace("ln_f.weight", "ln_f.gamma").Replace("ln_f.bias", "ln_f.beta"), s => s.Slot.Tensor);
        Assert.Contains("transformer.ln_f.gamma", state.Keys);
        var loaded = PreTrainedModel.FromPretrained(TestPaths.Model("gpt2"), new FromPretrainedOptions { StateDict = state }, out var info);
        Assert.Empty(info.MissingKeys);
        Assert.Empty(info.UnexpectedKeys);
        Assert.Equal(LastLogits(full, Prompt), LastLogits(loaded, Prompt));
    }

    [Fact]
    public void Mismatched_sizes_fail_by_default_and_are_reported_when_ignored()
    {
        var overrides = new Dictionary<string, JsonNode?> { ["vocab_size"] = 210 };
        var ex = Assert.Throws<ShapeMismatchException>(() =>
            PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"), new FromPretrainedOptions { ConfigOverrides = overrides }));
        Assert.Contains("model.embed_tokens.weight", ex.Message);
        Assert.Contains("ignore_mismatched_sizes", ex.Message);
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"),
            new FromPretrainedOptions { ConfigOverrides = overrides, IgnoreMismatchedSizes = true }, out var info);
        Assert.Equal(new[] { "model.embed_tokens.weight", "lm_head.weight" }, info.MismatchedKeys.Select(m => m.Key));
        var cfg = PretrainedConfig.FromFolder(TestPaths.Model("llama_untied"));
        Assert.Equal(new[] { cfg.GetLong("vocab_size"), cfg.GetLong("hidden_size") }, info.MismatchedKeys[0].CheckpointShape);
        Assert.Equal(new[] { 210, cfg.GetLong("hidden_size") }, info.MismatchedKeys[0].ModelShape);
        Assert.Equal(210, model.VocabSize);
        Assert.Equal(2, info.ErrorMsgs.Count);
    }

    [Fact]
    public void Missing_and_unexpected_keys_are_reported_and_strict_loading_refuses_them()
    {
        var full = PreTrainedModel.FromPretrained(TestPaths.Model("qwen2"));
        var state = full.StateDictSlots().DistinctBy(s => s.Slot).ToDictionary(s => s.Key, s => s.Slot.Tensor);
        state.Remove("model.layers.1.self_attn.q_proj.bias");
        state["model.extra.weight"] = ones(3);
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("qwen2"), new FromPretrainedOptions { StateDict = state }, out var info);
        Assert.Equal(new[] { "model.layers.1.self_attn.q_proj.bias" }, info.MissingKeys);
        Assert.Equal(new[] { "model.extra.weight" }, info.UnexpectedKeys);
        // A missing bias is initialised to zeros, as HF's _init_weights does.
        var bias = model.NamedParameters().Single(p => p.Key == "model.layers.1.self_attn.q_proj.bias").Slot.Tensor;
        Assert.Equal(0f, bias.abs().sum().item<float>());
        var ex = Assert.Throws<LoadingException>(() => PreTrainedModel.FromPretrained(TestPaths.Model("qwen2"), new FromPretrainedOptions { StateDict = state, Strict = true }));
        Assert.Contains("model.extra.weight", ex.Message);
    }

    [Fact]
    public void Config_override_and_explicit_config_are_honoured()
    {
        var cfg = PretrainedConfig.FromFolder(TestPaths.Model("mistral_window"));
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("mistral_window"), new FromPretrainedOptions
        {
            Config = cfg,
            ConfigOverrides = new Dictionary<string, JsonNode?> { ["sliding_window"] = 4 },
        });
        Assert.Equal(4, model.Config.GetLong("sliding_window"));
        Assert.Equal(8, cfg.GetLong("sliding_window")); // the caller's config is not mutated
    }

    [Fact]
    public void A_device_map_dict_places_modules_and_reports_hf_device_map()
    {
        var map = new Dictionary<string, string> { ["model.embed_tokens"] = "cpu", ["model.layers"] = "cpu", ["model.norm"] = "cpu", ["lm_head"] = "cpu" };
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"), new FromPretrainedOptions { DeviceMapDict = map });
        Assert.Equal(map.Keys, model.HfDeviceMap.Select(kv => kv.Key));
        var bad = new Dictionary<string, string> { ["model.embed_tokens"] = "cpu", ["model.layer"] = "cpu" };
        var ex = Assert.Throws<PlacementException>(() => PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"), new FromPretrainedOptions { DeviceMapDict = bad }));
        Assert.Contains("model.layers", ex.Message); // a close match is suggested
        var partial = new Dictionary<string, string> { ["model.embed_tokens"] = "cpu" };
        Assert.Contains("no device", Assert.Throws<PlacementException>(() =>
            PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"), new FromPretrainedOptions { DeviceMapDict = partial })).Message);
        Assert.Contains("cuda:0 requested, but this build has no CUDA", Assert.Throws<UnsupportedException>(() =>
            PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"), new FromPretrainedOptions { DeviceMap = "0" })).Message);
    }

    [Fact]
    public void Auto_model_falls_back_to_model_type_and_accepts_registrations()
    {
        var cfg = PretrainedConfig.FromFolder(TestPaths.Model("qwen2")).Clone();
        cfg.Set("architectures", null);
        Assert.Equal("Qwen2ForCausalLM", AutoModel.FromConfig(cfg).ClassName);
        cfg.Set("architectures", new JsonArray("MyCustomForCausalLM"));
        cfg.Set("model_type", "custom");
        Assert.Throws<UnsupportedException>(() => AutoModel.FromConfig(cfg));
        AutoModel.Register("MyCustomForCausalLM", c => new LlamaForCausalLM(c, LlamaVariant.Qwen2));
        Assert.Equal("Qwen2ForCausalLM", AutoModel.FromConfig(cfg).ClassName);
    }

    [Fact]
    public void Casting_on_save_writes_the_new_dtype_and_config()
    {
        using var tmp = new TempDir();
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("llama_untied"));
        PreTrainedModel.SavePretrained(model, tmp.Path, new SaveOptions { DType = "bfloat16" });
        Assert.Equal("bfloat16", PretrainedConfig.FromFolder(tmp.Path).TorchDtype);
        using var ckpt = Checkpoint.Open(tmp.Path);
        Assert.All(ckpt.Tensors, t => Assert.Equal(DType.BF16, t.Info.DType));
        var auto = PreTrainedModel.FromPretrained(tmp.Path, new FromPretrainedOptions { DType = "auto" });
        Assert.Equal(ScalarType.BFloat16, auto.DType);
    }
}
