using System.Text;
using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;

namespace ShardPipe.Host.Bench.Gguf;

/// <summary>
/// Writes a Llama safetensors checkpoint as a GGUF v3 file that llama.cpp loads, for measuring ShardPipe beside llama.cpp
/// on the same weights (<c>bench vs-llamacpp</c>): llama's hyper-parameters, a "gpt2" (byte-level BPE) vocabulary from
/// tokenizer.json, and the tensors under llama.cpp's names, matrices in F32, F16, Q8_0 or Q4_0 and vectors in F32. As
/// llama.cpp's converter does, the rows of q_proj and k_proj are reordered per head from Hugging Face's rotary layout
/// (the two halves of a head rotate together) to ggml's (adjacent pairs rotate together).
/// </summary>
public static class GgufWriter
{
    public const int Alignment = 32;

    private enum ValueType : uint { UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9 }

    /// <summary>ggml's file types (general.file_type): all F32, mostly F16, mostly Q4_0, mostly Q8_0.</summary>
    private static uint FileType(GgmlType t) => t switch { GgmlType.F32 => 0, GgmlType.F16 => 1, GgmlType.Q4_0 => 2, GgmlType.Q8_0 => 7, _ => 0 };

    private sealed record Entry(string GgufName, TensorLocation Source, long[] Shape, GgmlType Type, Func<float[], float[]>? Reorder)
    {
        public long Bytes => Shape.Length == 1 ? GgmlBlocks.RowBytes(Type, Shape[0]) : Shape[0] * GgmlBlocks.RowBytes(Type, Shape[1]);
        public long Offset { get; set; }
    }

    /// <summary>Writes <paramref name="output"/> from the checkpoint in <paramref name="folder"/>; returns its size in bytes.</summary>
    public static long Write(string folder, string output, GgmlType matrixType)
    {
        var config = PretrainedConfig.FromFolder(folder);
        if (config.ModelType != "llama")
            throw new UnsupportedException($"{config.SourcePath}: model_type '{config.ModelType}': the GGUF writer handles llama checkpoints");
        int hidden = config.GetInt("hidden_size"), heads = config.GetInt("num_attention_heads"), layers = config.GetInt("num_hidden_layers");
        int kvHeads = config.GetInt("num_key_value_heads", heads), vocabSize = config.GetInt("vocab_size");
        int headDim = config.GetInt("head_dim", hidden / heads);
        var vocab = GgufVocabulary.FromFolder(folder, vocabSize);

        using var ckpt = Checkpoint.Open(folder);
        var entries = new List<Entry>();
        void Add(string gguf, string hf, Func<float[], float[]>? reorder = null, bool required = true)
        {
            if (!ckpt.Contains(hf))
            {
                if (required) throw new CheckpointFormatException(folder, hf, "missing: the GGUF writer needs it");
                return;
            }
            var loc = ckpt.Get(hf);
            var shape = loc.Info.Shape;
            if (shape.Length is < 1 or > 2) throw new CheckpointFormatException(loc.Shard, hf, $"shape [{string.Join(", ", shape)}]: expected a vector or a matrix");
            var type = shape.Length == 1 ? GgmlType.F32 : matrixType;
            if (GgmlBlocks.IsQuantized(type) && shape[1] % GgmlBlocks.BlockSize != 0) type = GgmlType.F16;
            entries.Add(new Entry(gguf, loc, shape, type, reorder));
        }
        Add("token_embd.weight", "model.embed_tokens.weight");
        for (int i = 0; i < layers; i++)
        {
            string p = $"model.layers.{i}.", b = $"blk.{i}.";
            Add(b + "attn_norm.weight", p + "input_layernorm.weight");
            Add(b + "attn_q.weight", p + "self_attn.q_proj.weight", w => RotaryRows(w, heads, headDim, hidden));
            Add(b + "attn_k.weight", p + "self_attn.k_proj.weight", w => RotaryRows(w, kvHeads, headDim, hidden));
            Add(b + "attn_v.weight", p + "self_attn.v_proj.weight");
            Add(b + "attn_output.weight", p + "self_attn.o_proj.weight");
            Add(b + "ffn_norm.weight", p + "post_attention_layernorm.weight");
            Add(b + "ffn_gate.weight", p + "mlp.gate_proj.weight");
            Add(b + "ffn_up.weight", p + "mlp.up_proj.weight");
            Add(b + "ffn_down.weight", p + "mlp.down_proj.weight");
        }
        Add("output_norm.weight", "model.norm.weight");
        Add("output.weight", "lm_head.weight", required: !config.GetBool("tie_word_embeddings", false));
        if (entries[0].Shape[0] != vocab.Tokens.Count)
            throw new CheckpointFormatException(folder, "model.embed_tokens.weight", $"{entries[0].Shape[0]} rows but a vocabulary of {vocab.Tokens.Count}");

        // Header, metadata and tensor infos, then the tensors, each at an offset aligned to 32 from the data section.
        var head = new MemoryStream();
        var w = new BinaryWriter(head, Encoding.UTF8);
        var kv = new List<Action>();
        void Kv(string key, ValueType type, Action value) => kv.Add(() => { Str(w, key); w.Write((uint)type); value(); });
        Kv("general.architecture", ValueType.String, () => Str(w, "llama"));
        Kv("general.name", ValueType.String, () => Str(w, Path.GetFileName(Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar))));
        Kv("general.file_type", ValueType.UInt32, () => w.Write(FileType(matrixType)));
        Kv("general.alignment", ValueType.UInt32, () => w.Write((uint)Alignment));
        Kv("llama.vocab_size", ValueType.UInt32, () => w.Write((uint)vocabSize));
        Kv("llama.context_length", ValueType.UInt32, () => w.Write((uint)config.GetInt("max_position_embeddings", 2048)));
        Kv("llama.embedding_length", ValueType.UInt32, () => w.Write((uint)hidden));
        Kv("llama.block_count", ValueType.UInt32, () => w.Write((uint)layers));
        Kv("llama.feed_forward_length", ValueType.UInt32, () => w.Write((uint)config.GetInt("intermediate_size")));
        Kv("llama.attention.head_count", ValueType.UInt32, () => w.Write((uint)heads));
        Kv("llama.attention.head_count_kv", ValueType.UInt32, () => w.Write((uint)kvHeads));
        Kv("llama.attention.layer_norm_rms_epsilon", ValueType.Float32, () => w.Write((float)config.GetDouble("rms_norm_eps", 1e-6)));
        Kv("llama.rope.freq_base", ValueType.Float32, () => w.Write((float)config.GetDouble("rope_theta", 10000.0)));
        Kv("llama.rope.dimension_count", ValueType.UInt32, () => w.Write((uint)headDim));
        Kv("tokenizer.ggml.model", ValueType.String, () => Str(w, "gpt2"));
        Kv("tokenizer.ggml.tokens", ValueType.Array, () => { w.Write((uint)ValueType.String); w.Write((ulong)vocab.Tokens.Count); foreach (var t in vocab.Tokens) Str(w, t); });
        Kv("tokenizer.ggml.token_type", ValueType.Array, () => { w.Write((uint)ValueType.Int32); w.Write((ulong)vocab.Types.Count); foreach (var t in vocab.Types) w.Write(t); });
        Kv("tokenizer.ggml.merges", ValueType.Array, () => { w.Write((uint)ValueType.String); w.Write((ulong)vocab.Merges.Count); foreach (var m in vocab.Merges) Str(w, m); });
        if (config.GetLongOrNull("bos_token_id") is { } bos) Kv("tokenizer.ggml.bos_token_id", ValueType.UInt32, () => w.Write((uint)bos));
        if (config.GetLongOrNull("eos_token_id") is { } eos) Kv("tokenizer.ggml.eos_token_id", ValueType.UInt32, () => w.Write((uint)eos));
        Kv("tokenizer.ggml.add_bos_token", ValueType.Bool, () => w.Write(false));

        w.Write(Encoding.ASCII.GetBytes("GGUF"));
        w.Write(3u);
        w.Write((ulong)entries.Count);
        w.Write((ulong)kv.Count);
        foreach (var k in kv) k();
        long offset = 0;
        foreach (var e in entries)
        {
            e.Offset = offset;
            offset = Align(offset + e.Bytes);
            Str(w, e.GgufName);
            w.Write((uint)e.Shape.Length);
            for (int d = e.Shape.Length - 1; d >= 0; d--) w.Write((ulong)e.Shape[d]); // ggml's ne[0] is the innermost (columns)
            w.Write((uint)e.Type);
            w.Write((ulong)e.Offset);
        }
        w.Flush();
        while (head.Length % Alignment != 0) head.WriteByte(0);

        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
        string partial = output + ".partial";
        using (var fs = new FileStream(partial, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            head.Position = 0;
            head.CopyTo(fs);
            long dataStart = fs.Position;
            foreach (var e in entries)
            {
                while (fs.Position - dataStart < e.Offset) fs.WriteByte(0);
                var values = ReadFloats(ckpt, e.Source);
                if (e.Reorder is { } r) values = r(values);
                var bytes = new byte[e.Bytes];
                GgmlBlocks.Encode(e.Type, values, bytes);
                fs.Write(bytes);
            }
            while ((fs.Position - dataStart) % Alignment != 0) fs.WriteByte(0);
        }
        File.Move(partial, output, overwrite: true);
        return new FileInfo(output).Length;
    }

    private static long Align(long x) => (x + Alignment - 1) / Alignment * Alignment;

    private static void Str(BinaryWriter w, string s)
    {
        var b = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)b.Length);
        w.Write(b);
    }

    /// <summary>A tensor's values as float32, whatever its stored floating dtype.</summary>
    private static float[] ReadFloats(Checkpoint ckpt, TensorLocation loc)
    {
        var raw = new byte[loc.Info.ByteLength];
        ckpt.ReadInto(loc, raw);
        long n = loc.Info.ElementCount;
        var f = new float[n];
        switch (loc.Info.DType)
        {
            case DType.F32: Buffer.BlockCopy(raw, 0, f, 0, raw.Length); break;
            case DType.F16: for (long i = 0; i < n; i++) f[i] = (float)BitConverter.ToHalf(raw, (int)(i * 2)); break;
            case DType.BF16: for (long i = 0; i < n; i++) f[i] = BitConverter.UInt32BitsToSingle((uint)BitConverter.ToUInt16(raw, (int)(i * 2)) << 16); break;
            default: throw new CheckpointFormatException(loc.Shard, loc.Name, $"dtype {loc.Info.DType}: the GGUF writer reads F32, F16 and BF16");
        }
        return f;
    }

    /// <summary>
    /// Reorders the rows of a q_proj or k_proj weight ([heads·headDim, columns]) within each head: row i·headDim/2 + j
    /// (half i of the head, position j) moves to row 2·j + i, so that ggml's rotary, which turns adjacent pairs, turns the
    /// pairs that Hugging Face's rotate_half turns.
    /// </summary>
    public static float[] RotaryRows(float[] w, int heads, int headDim, int columns)
    {
        if (w.Length != (long)heads * headDim * columns)
            throw new ShapeMismatchException($"rotary rows: {w.Length} values is not {heads} heads × {headDim} × {columns}");
        var o = new float[w.Length];
        int half = headDim / 2;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < half; j++)
                    Array.Copy(w, ((long)h * headDim + i * half + j) * columns, o, ((long)h * headDim + 2 * j + i) * columns, columns);
        return o;
    }
}
