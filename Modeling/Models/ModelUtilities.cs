using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Models;

/// <summary>The utilities of PreTrainedModel beyond loading: embeddings, masks, buffers, casts, sharded loads.</summary>
public static class ModelUtilities
{
    /// <summary><c>resize_token_embeddings</c>: new rows start at the mean of the old ones (HF's mean_resizing, its
    /// fallback form) or at N(0, initializer_range); a tied head stays tied; config.vocab_size follows.</summary>
    public static Embedding ResizeTokenEmbeddings(this CausalLMModel model, long? newNumTokens = null, int? padToMultipleOf = null, bool meanResizing = true)
    {
        var input = model.InputEmbeddings;
        long oldCount = input.Weight.Shape[0];
        long target = newNumTokens ?? oldCount;
        if (padToMultipleOf is { } pad)
        {
            if (pad <= 0) throw new InvalidInputException("pad_to_multiple_of must be a positive integer");
            target = (target + pad - 1) / pad * pad;
        }
        if (target <= 0) throw new InvalidInputException("new_num_tokens must be positive");
        bool tied = ReferenceEquals(input.Weight, model.OutputEmbeddings.Weight);
        double std = model.Config.GetDouble("initializer_range", 0.02);
        input.Weight.Set(Resized(input.Weight.Tensor, target, meanResizing, std));
        if (!tied)
        {
            var head = model.OutputEmbeddings;
            head.Weight.Set(Resized(head.Weight.Tensor, target, meanResizing, std));
            if (head.Bias is { } bias) bias.Set(ResizedBias(bias.Tensor, target));
        }
        model.Config.Set("vocab_size", target);
        return input;
    }

    private static Tensor Resized(Tensor old, long rows, bool mean, double std)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        long keep = Math.Min(rows, old.Shape()[0]);
        var fresh = empty(new[] { rows, old.Shape()[1] }, old.dtype, old.device);
        fresh.narrow(0, 0, keep).copy_(old.narrow(0, 0, keep));
        if (rows > keep)
        {
            var tail = fresh.narrow(0, keep, rows - keep);
            if (mean) tail.copy_(old.to(ScalarType.Float32).mean(new long[] { 0 }, keepdim: true).expand(rows - keep, old.Shape()[1]).to(old.dtype));
            else tail.normal_(0, std);
        }
        return fresh.MoveToOuterDisposeScope();
    }

    private static Tensor ResizedBias(Tensor old, long rows)
    {
        using var noGrad = torch.no_grad();
        var fresh = zeros(new[] { rows }, old.dtype, old.device);
        long keep = Math.Min(rows, old.Shape()[0]);
        fresh.narrow(0, 0, keep).copy_(old.narrow(0, 0, keep));
        return fresh;
    }

    /// <summary><c>get_decoder</c>: the base model (LlamaModel, GPT2Model …).</summary>
    public static HfModule GetDecoder(this CausalLMModel model) =>
        model.Children.First(c => c.Name == model.BaseModelPrefix).Module;

    /// <summary><c>get_encoder</c>: a decoder-only model has no separate encoder, so (as HF's default) the model itself.</summary>
    public static HfModule GetEncoder(this CausalLMModel model) => model;

    /// <summary>
    /// <c>get_expanded_tied_weights_keys</c>: every state-dict key whose tensor is another key's (target → source, the
    /// source being the first name the shared tensor was registered under), e.g. <c>lm_head.weight</c> →
    /// <c>model.embed_tokens.weight</c>; empty for an untied model.
    /// </summary>
    public static IReadOnlyDictionary<string, string> GetExpandedTiedWeightsKeys(this HfModule model)
    {
        var first = new Dictionary<TensorSlot, string>(ReferenceEqualityComparer.Instance);
        var tied = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, slot) in model.NamedTensors(removeDuplicate: false))
            if (!first.TryAdd(slot, key)) tied[key] = first[slot];
        return tied;
    }

    /// <summary>
    /// <c>get_head_mask(head_mask, num_hidden_layers, is_attention_chunked)</c>: a [heads] or [layers, heads] mask (1 keeps
    /// a head, 0 drops it) as a [layers, batch, heads, query, key]-broadcastable 5-D tensor at the model's dtype (with a
    /// trailing unit dimension when chunked); no mask gives one null per layer.
    /// </summary>
    public static IReadOnlyList<Tensor?> GetHeadMask(this CausalLMModel model, Tensor? headMask, int numHiddenLayers, bool isAttentionChunked = false)
    {
        if (headMask is null) return Enumerable.Repeat<Tensor?>(null, numHiddenLayers).ToList();
        using var scope = NewDisposeScope();
        var mask = headMask.dim() switch
        {
            1 => headMask.unsqueeze(0).unsqueeze(0).unsqueeze(-1).unsqueeze(-1).expand(numHiddenLayers, -1, -1, -1, -1),
            2 => headMask.unsqueeze(1).unsqueeze(-1).unsqueeze(-1), // a mask per layer
            5 => headMask,
            var d => throw new InvalidInputException($"head_mask has {d} dimensions: give [num_heads] or [num_hidden_layers, num_heads]"),
        };
        mask = mask.to(model.DType);
        if (isAttentionChunked) mask = mask.unsqueeze(-1);
        return Enumerable.Range(0, (int)mask.Shape()[0]).Select(i => (Tensor?)mask[i].MoveToOuterDisposeScope()).ToList();
    }

    /// <summary><c>get_parameter_or_buffer</c>.</summary>
    public static Tensor GetParameterOrBuffer(this CausalLMModel model, string name) =>
        model.NamedTensors(removeDuplicate: false).FirstOrDefault(t => t.Key == name).Slot?.Tensor
        ?? throw new InvalidInputException($"{model.ClassName} has no parameter or buffer '{name}'");

    /// <summary>Buffers not saved in the state dict (rotary tables, causal masks).</summary>
    public static IEnumerable<(string Key, TensorSlot Slot)> NamedNonPersistentBuffers(this CausalLMModel model) =>
        model.NamedBuffers().Where(b => !b.Slot.Persistent);

    public static void SetAttnImplementation(this CausalLMModel model, string implementation) =>
        model.Attention = implementation switch
        {
            "sdpa" => AttnImplementation.Sdpa,
            "eager" => AttnImplementation.Eager,
            _ => throw new InvalidInputException($"attn_implementation '{implementation}': use sdpa or eager"),
        };

    /// <summary><c>get_extended_attention_mask</c> for a decoder: (B, T) 0/1 → additive (B, 1, T, T), causal and padding.</summary>
    public static Tensor GetExtendedAttentionMask(Tensor attentionMask, ScalarType dtype)
    {
        long b = attentionMask.Shape()[0], t = attentionMask.Shape()[1];
        var hasPad = attentionMask.eq(0).any().item<bool>();
        return AttentionMask.Build(hasPad ? attentionMask : null, b, t, 0, null, dtype, attentionMask.device, out _)
               ?? zeros(new[] { b, 1, t, t }, dtype, attentionMask.device);
    }

    /// <summary><c>invert_attention_mask</c>: (B, T) 0/1 → (B, 1, 1, T) with 0 where kept and the dtype's minimum where masked.</summary>
    public static Tensor InvertAttentionMask(Tensor encoderMask, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var m = encoderMask.to(dtype).unsqueeze(1).unsqueeze(1);
        return ((1.0 - m) * AttentionMask.MinValue(dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <c>add_memory_hooks</c>: every module records the process's RSS before and after each of its forwards
    /// (<c>mem_rss_pre_forward</c>, <c>mem_rss_post_forward</c>) and sums the differences (<c>mem_rss_diff</c>), from zero.
    /// Modules that never run a forward keep zeros: containers (as in HF) and the rotary embeddings (their tables are made once per pass).
    /// </summary>
    public static void AddMemoryHooks(this HfModule model)
    {
        foreach (var (_, module) in model.NamedModules()) module.MemoryHook ??= new MemoryHookState();
        model.ResetMemoryHooksState();
    }

    /// <summary><c>reset_memory_hooks_state</c>: every module's three figures back to zero.</summary>
    public static void ResetMemoryHooksState(this HfModule model)
    {
        foreach (var (_, module) in model.NamedModules()) module.MemoryHook?.Reset();
    }

    /// <summary>Turns the hooks off again (HF keeps them for the model's life; here they can go).</summary>
    public static void RemoveMemoryHooks(this HfModule model)
    {
        foreach (var (_, module) in model.NamedModules()) module.MemoryHook = null;
    }

    /// <summary>Each hooked module's path ("" = the model), class and figures, in <c>named_modules()</c> order.</summary>
    public static IReadOnlyList<(string Path, string ClassName, MemoryHookState State)> MemoryHooksState(this HfModule model) =>
        model.NamedModules().Where(m => m.Module.MemoryHook is not null).Select(m => (m.Path, m.Module.ClassName, m.Module.MemoryHook!)).ToList();

    /// <summary>Casts floating parameters to <paramref name="dtype"/>, except those <paramref name="keep"/> accepts (Flax's to_fp16/to_bf16/to_fp32 with a mask).</summary>
    public static void CastParameters(this CausalLMModel model, DType dtype, Func<string, bool>? keep = null)
    {
        using var noGrad = torch.no_grad();
        var type = TorchRuntime.ToScalarType(dtype);
        foreach (var (key, slot) in model.NamedParameters())
            if (slot.IsMaterialised && slot.Tensor.is_floating_point() && !(keep?.Invoke(key) ?? false))
                slot.Set(slot.Tensor.to(type));
        if (keep is null) model.DType = type;
    }

    /// <summary>
    /// <c>load_sharded_checkpoint(model, folder, strict, prefer_safe)</c>: fills an existing model from a folder's
    /// safetensors checkpoint (single or sharded); returns missing and unexpected keys; strict raises on either.
    /// </summary>
    public static (IReadOnlyList<string> Missing, IReadOnlyList<string> Unexpected) LoadShardedCheckpoint(this CausalLMModel model,
        string folder, bool strict = true, bool preferSafe = true)
    {
        _ = preferSafe; // only safetensors are read
        using var ckpt = Checkpoint.Open(folder);
        var expected = model.StateDictSlots().ToList();
        var names = expected.Select(e => e.Key).ToHashSet(StringComparer.Ordinal);
        var missing = expected.Where(e => !ckpt.Contains(e.Key) && !expected.Any(o => ReferenceEquals(o.Slot, e.Slot) && ckpt.Contains(o.Key)))
            .Select(e => e.Key).ToList();
        var unexpected = ckpt.Tensors.Select(t => t.Name).Where(n => !names.Contains(n)).ToList();
        if (strict && (missing.Count > 0 || unexpected.Count > 0))
            throw new LoadingException($"error(s) in loading state_dict for {model.ClassName} from {folder}: missing keys [{string.Join(", ", missing)}], unexpected keys [{string.Join(", ", unexpected)}]");
        var source = StateSource.FromCheckpoint(ckpt);
        using var noGrad = torch.no_grad();
        foreach (var (key, slot) in expected)
        {
            if (!ckpt.Contains(key) || !slot.IsMaterialised) continue;
            var shape = ckpt.Get(key).Info.Shape;
            if (!shape.SequenceEqual(slot.Shape))
                throw new ShapeMismatchException($"{ckpt.Get(key).Shard}: '{key}' has shape [{string.Join(", ", shape)}], the model expects [{string.Join(", ", slot.Shape)}]");
            source.Fill(key, slot.Tensor);
        }
        return (missing, unexpected);
    }
}
