using System.Text.Json.Nodes;
using ShardPipe.Checkpoints.SafeTensors;

namespace ShardPipe.Checkpoints.Synthetic;

/// <summary>Shape of a generated Llama checkpoint (for demos, tests and benchmarks; no download needed).</summary>
public sealed record SyntheticLlamaSpec
{
    public int HiddenSize { get; init; } = 64;
    public int IntermediateSize { get; init; } = 172;
    public int NumLayers { get; init; } = 4;
    public int NumHeads { get; init; } = 4;
    public int NumKeyValueHeads { get; init; } = 2;
    public int VocabSize { get; init; } = 256;
    public int MaxPositions { get; init; } = 512;
    public bool TieWordEmbeddings { get; init; }
    public DType DType { get; init; } = DType.F32;
    public string MaxShardSize { get; init; } = "5GB";
    public ulong Seed { get; init; } = 1234;
    /// <summary>Experts per block (<c>num_local_experts</c>): 0 writes a dense Llama, more a <c>MixtralForCausalLM</c>.</summary>
    public int NumLocalExperts { get; init; }
    /// <summary>Experts each token is routed to (<c>num_experts_per_tok</c>), for a Mixtral.</summary>
    public int NumExpertsPerTok { get; init; } = 2;

    /// <summary>About 125M parameters: hidden 768, 12 layers, vocab 32000 (the decode benchmark's model).</summary>
    public static SyntheticLlamaSpec Llama125M => new()
    {
        HiddenSize = 768, IntermediateSize = 2048, NumLayers = 12, NumHeads = 12, NumKeyValueHeads = 12, VocabSize = 32000,
        MaxPositions = 2048, MaxShardSize = "200MB",
    };

    /// <summary>About 1.1 GiB in fp32 (≈290M parameters), sharded at 256 MB: the loading benchmarks' model.</summary>
    public static SyntheticLlamaSpec Llama1GiB => new()
    {
        HiddenSize = 1024, IntermediateSize = 2816, NumLayers = 22, NumHeads = 16, NumKeyValueHeads = 8, VocabSize = 32000,
        MaxPositions = 2048, MaxShardSize = "256MB",
    };

    /// <summary>A Mixtral of ≈294M parameters (8 experts, top-2; ≈104M active per token): the MoE decode benchmark's model.</summary>
    public static SyntheticLlamaSpec Mixtral300M => new()
    {
        HiddenSize = 768, IntermediateSize = 1536, NumLayers = 8, NumHeads = 12, NumKeyValueHeads = 4, VocabSize = 32000,
        MaxPositions = 2048, MaxShardSize = "200MB", NumLocalExperts = 8, NumExpertsPerTok = 2,
    };
}

/// <summary>
/// Writes a Llama checkpoint with Hugging Face's layout (config.json, sharded safetensors, index) and
/// deterministic pseudo-random weights, in LlamaForCausalLM's state-dict order.
/// </summary>
public static class SyntheticLlama
{
    public static IReadOnlyList<(string Name, long[] Shape)> StateDictLayout(SyntheticLlamaSpec s)
    {
        int headDim = s.HiddenSize / s.NumHeads;
        long kv = (long)s.NumKeyValueHeads * headDim;
        var list = new List<(string, long[])> { ("model.embed_tokens.weight", new long[] { s.VocabSize, s.HiddenSize }) };
        for (int i = 0; i < s.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            list.Add((p + "self_attn.q_proj.weight", new long[] { s.HiddenSize, s.HiddenSize }));
            list.Add((p + "self_attn.k_proj.weight", new long[] { kv, s.HiddenSize }));
            list.Add((p + "self_attn.v_proj.weight", new long[] { kv, s.HiddenSize }));
            list.Add((p + "self_attn.o_proj.weight", new long[] { s.HiddenSize, s.HiddenSize }));
            if (s.NumLocalExperts > 0)
            {
                list.Add((p + "block_sparse_moe.gate.weight", new long[] { s.NumLocalExperts, s.HiddenSize }));
                for (int e = 0; e < s.NumLocalExperts; e++)
                {
                    list.Add((p + $"block_sparse_moe.experts.{e}.w1.weight", new long[] { s.IntermediateSize, s.HiddenSize }));
                    list.Add((p + $"block_sparse_moe.experts.{e}.w2.weight", new long[] { s.HiddenSize, s.IntermediateSize }));
                    list.Add((p + $"block_sparse_moe.experts.{e}.w3.weight", new long[] { s.IntermediateSize, s.HiddenSize }));
                }
            }
            else
            {
                list.Add((p + "mlp.gate_proj.weight", new long[] { s.IntermediateSize, s.HiddenSize }));
                list.Add((p + "mlp.up_proj.weight", new long[] { s.IntermediateSize, s.HiddenSize }));
                list.Add((p + "mlp.down_proj.weight", new long[] { s.HiddenSize, s.IntermediateSize }));
            }
            list.Add((p + "input_layernorm.weight", new long[] { s.HiddenSize }));
            list.Add((p + "post_attention_layernorm.weight", new long[] { s.HiddenSize }));
        }
        list.Add(("model.norm.weight", new long[] { s.HiddenSize }));
        if (!s.TieWordEmbeddings) list.Add(("lm_head.weight", new long[] { s.VocabSize, s.HiddenSize }));
        return list;
    }

    public static JsonObject Config(SyntheticLlamaSpec s)
    {
        var c = LlamaConfig(s);
        if (s.NumLocalExperts == 0) return c;
        // MixtralConfig's fields (transformers 4.38): Mistral's plus the router's.
        c["architectures"] = new JsonArray("MixtralForCausalLM");
        c["model_type"] = "mixtral";
        c.Remove("attention_bias");
        c.Remove("pretraining_tp");
        c.Remove("rope_scaling");
        c["rope_theta"] = 1e6;
        c["sliding_window"] = null;
        c["num_local_experts"] = s.NumLocalExperts;
        c["num_experts_per_tok"] = s.NumExpertsPerTok;
        c["output_router_logits"] = false;
        c["router_aux_loss_coef"] = 0.001;
        return c;
    }

    private static JsonObject LlamaConfig(SyntheticLlamaSpec s) => new()
    {
        ["architectures"] = new JsonArray("LlamaForCausalLM"),
        ["attention_bias"] = false,
        ["attention_dropout"] = 0.0,
        ["bos_token_id"] = 1,
        ["eos_token_id"] = s.VocabSize - 1,
        ["hidden_act"] = "silu",
        ["hidden_size"] = s.HiddenSize,
        ["initializer_range"] = 0.02,
        ["intermediate_size"] = s.IntermediateSize,
        ["max_position_embeddings"] = s.MaxPositions,
        ["model_type"] = "llama",
        ["num_attention_heads"] = s.NumHeads,
        ["num_hidden_layers"] = s.NumLayers,
        ["num_key_value_heads"] = s.NumKeyValueHeads,
        ["pretraining_tp"] = 1,
        ["rms_norm_eps"] = 1e-6,
        ["rope_scaling"] = null,
        ["rope_theta"] = 10000.0,
        ["tie_word_embeddings"] = s.TieWordEmbeddings,
        ["torch_dtype"] = DTypes.TorchName(s.DType),
        ["use_cache"] = true,
        ["vocab_size"] = s.VocabSize,
    };

    /// <summary>Writes the checkpoint into <paramref name="folder"/>; returns the files written.</summary>
    public static IReadOnlyList<string> Write(string folder, SyntheticLlamaSpec spec)
    {
        Directory.CreateDirectory(folder);
        new PretrainedConfig(Config(spec)).Save(Path.Combine(folder, CheckpointNames.Config));
        File.WriteAllText(Path.Combine(folder, CheckpointNames.GenerationConfig),
            $"{{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": {spec.VocabSize - 1},\n  \"transformers_version\": \"4.38.1\"\n}}\n");
        ulong seed = spec.Seed;
        var sources = new List<TensorSource>();
        foreach (var (name, shape) in StateDictLayout(spec))
        {
            ulong tensorSeed = seed++;
            bool isNorm = name.EndsWith("norm.weight", StringComparison.Ordinal);
            float scale = isNorm ? 0.1f : 1.0f / MathF.Sqrt(shape[^1]);
            float offset = isNorm ? 1.0f : 0.0f;
            sources.Add(new TensorSource(name, spec.DType, shape, dst => Fill(dst, spec.DType, tensorSeed, scale, offset)));
        }
        return ShardedWriter.Save(folder, sources, ByteSize.Parse(spec.MaxShardSize));
    }

    /// <summary>Uniform values in [offset − scale, offset + scale) from a splitmix/xorshift stream.</summary>
    private static void Fill(Span<byte> dst, DType dtype, ulong seed, float scale, float offset)
    {
        ulong x = seed * 0x9E3779B97F4A7C15UL + 0x632BE59BD9B4E019UL;
        int size = DTypes.Size(dtype);
        int n = dst.Length / size;
        for (int i = 0; i < n; i++)
        {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            float u = (x >> 40) * (1.0f / (1 << 24)) * 2f - 1f;
            float v = offset + scale * u;
            switch (dtype)
            {
                case DType.F32: BitConverter.TryWriteBytes(dst.Slice(i * 4, 4), v); break;
                case DType.F16: BitConverter.TryWriteBytes(dst.Slice(i * 2, 2), (Half)v); break;
                case DType.BF16: BitConverter.TryWriteBytes(dst.Slice(i * 2, 2), (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16)); break;
                default: throw new UnsupportedException($"synthetic weights in {dtype}");
            }
        }
    }
}
