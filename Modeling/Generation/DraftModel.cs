using ShardPipe.Modeling.Core;
using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Generation;

/// <summary>
/// Whether a draft model can propose tokens for a target (pure over the two folders' files, read before anything is
/// loaded): the same <c>vocab_size</c> in config.json, and — where both folders hold one — the same tokenizer
/// (tokenizer.json's <c>model</c> and <c>added_tokens</c>, or tokenizer.model byte for byte). A difference is an
/// <see cref="InvalidInputException"/> naming the draft's file and field.
/// </summary>
public static class DraftModelCheck
{
    /// <summary>Checks <paramref name="draftFolder"/> against <paramref name="targetFolder"/> (both local model folders).</summary>
    public static void Validate(string targetFolder, string draftFolder)
    {
        var target = PretrainedConfig.FromFolder(targetFolder);
        var draft = PretrainedConfig.FromFolder(draftFolder);
        SameVocab(draft.GetLong("vocab_size"), target.GetLong("vocab_size"), $"--draft-model {draftFolder}");
        CheckTokenizers(targetFolder, draftFolder);
    }

    /// <summary>A loaded draft against the target's vocabulary size (the check a worker repeats before it proposes).</summary>
    public static void CheckVocab(CausalLMModel draft, long targetVocab, string draftFolder) =>
        SameVocab(draft.VocabSize, targetVocab, $"draft model {draftFolder}");

    private static void SameVocab(long draftVocab, long targetVocab, string who)
    {
        if (draftVocab != targetVocab)
            throw new InvalidInputException($"{who}: config.json vocab_size {draftVocab} differs from the target's {targetVocab} (a draft model needs the target's vocabulary)");
    }

    private static void CheckTokenizers(string targetFolder, string draftFolder)
    {
        string tj = Path.Combine(targetFolder, "tokenizer.json"), dj = Path.Combine(draftFolder, "tokenizer.json");
        if (File.Exists(tj) && File.Exists(dj))
        {
            var t = StrictJson.Parse(tj, File.ReadAllText(tj)) as JsonObject;
            var d = StrictJson.Parse(dj, File.ReadAllText(dj)) as JsonObject;
            foreach (var field in new[] { "model", "added_tokens" })
            {
                if (!JsonNode.DeepEquals(t?[field], d?[field]))
                    throw new InvalidInputException($"--draft-model {draftFolder}: tokenizer.json \"{field}\" differs from the target's (a draft model needs the target's tokenizer)");
            }
        }
        string ts = Path.Combine(targetFolder, "tokenizer.model"), ds = Path.Combine(draftFolder, "tokenizer.model");
        if (File.Exists(ts) && File.Exists(ds) && !File.ReadAllBytes(ts).AsSpan().SequenceEqual(File.ReadAllBytes(ds)))
            throw new InvalidInputException($"--draft-model {draftFolder}: tokenizer.model differs from the target's (a draft model needs the target's tokenizer)");
    }
}

/// <summary>
/// Draft models loaded in this process, once per folder, shared by every request that names it (each request keeps
/// its own <see cref="DraftProposer"/> and KV cache). Loaded in float32 on the CPU.
/// </summary>
public static class DraftModels
{
    private static readonly Dictionary<string, Lazy<CausalLMModel>> Loaded = new(StringComparer.Ordinal);

    /// <summary>The draft model in <paramref name="folder"/>, loaded on first use and checked against <paramref name="targetVocab"/>.</summary>
    public static CausalLMModel Get(string folder, long targetVocab)
    {
        string key = Path.GetFullPath(folder);
        Lazy<CausalLMModel> entry;
        lock (Loaded)
        {
            if (!Loaded.TryGetValue(key, out entry!))
                Loaded[key] = entry = new Lazy<CausalLMModel>(() => PreTrainedModel.FromPretrained(key), LazyThreadSafetyMode.ExecutionAndPublication);
        }
        CausalLMModel model;
        try { model = entry.Value; }
        catch
        {
            lock (Loaded) Loaded.Remove(key); // a failed load (missing folder, bad checkpoint) is tried again next time
            throw;
        }
        DraftModelCheck.CheckVocab(model, targetVocab, folder);
        return model;
    }
}

/// <summary>
/// A draft model's proposals: the tokens, and for sampled drafts the draft's processed distribution q at each (d rows
/// of the vocabulary, flattened: the rejection rule needs q(x) and, at a rejection, the whole row for the residual
/// norm(max(0, p − q))). <see cref="Probs"/> is null for greedy drafts (q a point mass at each token).
/// </summary>
public sealed record DraftProposal(long[] Tokens, float[]? Probs)
{
    public static readonly DraftProposal None = new(Array.Empty<long>(), null);
}

/// <summary>
/// One request's draft model: proposes k tokens — greedily (each the draft's argmax, so the acceptance rule's q is a
/// point mass at it), or, for a sampled request, each drawn from the draft's distribution after the request's own
/// penalty and warpers (<see cref="Sampler.Distribution"/>) with the draft stream of its seed
/// (<see cref="SpeculativeAcceptance.Propose"/>), keeping q for the verdict — and keeps its own KV cache in step with
/// the context. Each call finds where the context leaves
/// what the cache holds — accepted tokens kept, rejected drafts dropped (<see cref="KvCache.Truncate"/>) — feeds the
/// rest, then runs k − 1 one-token steps. A context that restarts (a resumed request) simply prefills again.
/// </summary>
public sealed class DraftProposer : IDisposable
{
    private readonly CausalLMModel _model;
    private readonly KvCache _cache = new();
    private readonly List<long> _seen = new(); // the ids whose keys and values the cache holds, in order
    private readonly long _maxPositions;

    public DraftProposer(CausalLMModel model)
    {
        _model = model;
        _maxPositions = model.Config.GetLongOrNull("max_position_embeddings") ?? model.Config.GetLongOrNull("n_positions") ?? long.MaxValue;
    }

    /// <summary>Positions the cache holds (for tests: kept in step with the accepted context).</summary>
    public int CachedTokens => _seen.Count;

    /// <summary>Bytes the draft's KV cache holds.</summary>
    public long CacheBytes => _cache.Bytes;

    /// <summary>Up to <paramref name="k"/> greedy draft tokens following <paramref name="context"/> (fewer where the draft runs out of positions).</summary>
    public long[] Propose(IReadOnlyList<long> context, int k) => Propose(context, k, null, 0).Tokens;

    /// <summary>
    /// Up to <paramref name="k"/> draft tokens following <paramref name="context"/>: greedy when <paramref name="sampler"/>
    /// is null or greedy; otherwise sampled from the draft's distribution under <paramref name="sampler"/>'s settings,
    /// the first being the request's new token number <paramref name="firstIndex"/>, with q kept.
    /// </summary>
    public DraftProposal Propose(IReadOnlyList<long> context, int k, Sampler? sampler, int firstIndex)
    {
        k = (int)Math.Min(k, _maxPositions - context.Count);
        if (k <= 0 || context.Count == 0) return DraftProposal.None;
        bool sampled = sampler is { IsGreedy: false };
        int common = 0;
        while (common < _seen.Count && common < context.Count && _seen[common] == context[common]) common++;
        if (common == context.Count) common--; // the last token is fed again: its logits give the first draft
        _cache.Truncate(common);
        _seen.RemoveRange(common, _seen.Count - common);
        var drafts = new long[k];
        float[]? probs = null;
        var feed = context.Skip(common).ToArray();
        // One draft model may serve the first stages of several models in one process: its passes never overlap.
        lock (_model)
        {
            for (int j = 0; j < k; j++)
            {
                using var scope = NewDisposeScope();
                using var ids = tensor(feed).unsqueeze(0);
                var logits = _model.Forward(ids, cache: _cache, lastOnly: true); // (1, 1, V)
                _seen.AddRange(feed);
                if (sampled)
                {
                    // The repetition penalty's history: the context and the drafts before this one (as the verdict sees them).
                    var history = new[] { (IReadOnlyCollection<long>)context.Concat(drafts.Take(j)).ToArray() };
                    var q = sampler!.Distribution(logits[0], history).data<float>().ToArray(); // (1, V)
                    probs ??= new float[k * q.Length];
                    q.CopyTo(probs, j * q.Length);
                    drafts[j] = SpeculativeAcceptance.Propose(q, sampler.Seed, firstIndex + j);
                }
                else drafts[j] = StepKernels.Argmax(logits[0])[^1]; // the last position's argmax, libtorch's rule
                feed = new[] { drafts[j] };
            }
        }
        return new DraftProposal(drafts, probs);
    }

    public void Dispose() => _cache.Dispose();
}
