using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// Prefix caching at one stage (the <see cref="StageRunner"/>'s hooks; the blocks themselves in <see cref="PrefixCache"/>).
/// The first stage turns a request's first prefill step into a plan (<see cref="Plan"/>: the prompt's block hashes and
/// the blocks every stage reuses — the longest prefix it holds — with the step's positions after them); each stage with
/// layers seeds the request's KV cache from those blocks (<see cref="Seed"/>), or, missing one, sends the step back to
/// the first stage to plan again with fewer; after each step it keeps the request's newly complete prompt blocks
/// (<see cref="Store"/>). Only one-row prompts without padding take part; every other step passes unchanged.
/// </summary>
public sealed class PrefixStage : IDisposable
{
    private readonly int _blockTokens;
    private readonly ulong _identity;
    // Per request and hop (keyed by the hop's first layer): the blocks it pins here, and the prompt blocks still to keep.
    private readonly Dictionary<(string Id, int Layer), List<ulong>> _pins = new();
    private readonly Dictionary<(string Id, int Layer), (ulong[] Hashes, int Next)> _pending = new();
    // At the first stage: the blocks each request was planned to reuse (a replan replaces it in the counts).
    private readonly Dictionary<string, int> _planned = new(StringComparer.Ordinal);

    public PrefixStage(PrefixCacheSettings settings, int epoch)
    {
        _blockTokens = settings.BlockTokens;
        _identity = PrefixCache.Identity(epoch, settings.BlockTokens);
        Cache = new PrefixCache(settings.MaxBytes);
    }

    /// <summary>A stage's prefix caching, or null when it is off.</summary>
    public static PrefixStage? For(PrefixCacheSettings settings, int epoch) => settings.Enabled ? new PrefixStage(settings, epoch) : null;

    public PrefixCache Cache { get; }

    /// <summary>Prompt tokens planned at this (first) stage, and of those the ones reused from the cache.</summary>
    public long PromptTokens { get; private set; }
    public long ReusedTokens { get; private set; }

    /// <summary>First steps sent back to the first stage because this stage lacked a block.</summary>
    public long Restarts { get; private set; }

    /// <summary>
    /// At the first hop: a request's first prefill step with its plan (block hashes, blocks reused, the step's ids and
    /// positions starting after them, the rest of the prompt re-chunked); any other step as it is.
    /// </summary>
    public StageInput Plan(StageInput s, PipelineHop hop)
    {
        if (!hop.Embed || s.Generation is not { } g) return s;
        long[] prompt;
        int chunk, max;
        bool replan = false;
        if (s.Prefix is { ReusedBlocks: < 0 } again)
        {
            (prompt, chunk, max, replan) = (again.PromptIds, again.Chunk, again.MaxBlocks, true);
        }
        else if (s.Prefix is null && FirstStepOfOneRow(s))
        {
            prompt = g.Prefill is { } rest ? s.InputIds![0].Concat(rest.InputIds[0]).ToArray() : s.InputIds![0];
            (chunk, max) = (g.Prefill?.Chunk ?? 0, int.MaxValue);
        }
        else return s;
        var hashes = PrefixCache.ChainHashes(prompt, _blockTokens, _identity);
        if (hashes.Length == 0) return s; // shorter than a block: nothing to reuse or keep
        // At least the prompt's last token is computed: its logits pick the first new token — and, for a speculative
        // request whose drafts ride on this step (appended to its ids), every draft's position too: the head verifies them.
        int drafts = g.Prefill is null ? g.Drafts?.Length ?? 0 : 0;
        int usable = Math.Min(Math.Min(max, hashes.Length), (prompt.Length - 1 - drafts) / _blockTokens);
        if (usable < 0) usable = 0;
        int reuse = hop.LayerCount > 0 ? Cache.LongestPrefix(hashes, Layers(hop), usable) : 0;
        int r = reuse * _blockTokens;
        if (!replan) PromptTokens += prompt.Length;
        ReusedTokens += r - (_planned.TryGetValue(s.RequestId, out int before) ? before * _blockTokens : 0);
        _planned[s.RequestId] = reuse;

        var ids = new[] { prompt[r..] };
        var ones = new[] { Enumerable.Repeat(1L, ids[0].Length).ToArray() };
        var positions = new[] { Enumerable.Range(r, ids[0].Length).Select(p => (long)p).ToArray() };
        var first = ChunkedPrefill.First(ids, ones, positions, chunk);
        return s with
        {
            InputIds = first.Ids,
            AttentionMask = new[] { Enumerable.Repeat(1L, r + first.Ids[0].Length).ToArray() },
            PositionIds = first.Positions,
            Hidden = null,
            Generation = g with { Prefill = PromptRestWire.ToWire(first.Rest) },
            Prefix = new PrefixPlan(prompt, chunk, _blockTokens, hashes.Select(h => unchecked((long)h)).ToArray(), reuse, max),
        };
    }

    /// <summary>One row, no padding, nothing before it: a prompt's first step (a later chunk or a decode step starts past 0).</summary>
    private static bool FirstStepOfOneRow(StageInput s) =>
        s.InputIds is { Length: 1 } ids && s.AttentionMask.Length == 1 && s.AttentionMask[0].Length == ids[0].Length
        && s.AttentionMask[0].All(m => m == 1) && s.PositionIds[0].Length > 0 && s.PositionIds[0][0] == 0
        && (s.Generation!.Prefill is not { } rest || rest.InputIds.Length == 1 && rest.AttentionMask[0].All(m => m == 1));

    /// <summary>
    /// Before a planned first step runs this hop's layers: drops what the request wrote there before (a step planned
    /// again), then copies the reused blocks into its cache and pins them. Null when it may run; else the step sent
    /// back to the first hop (this stage lacks a block), planned again with at most the blocks it has.
    /// </summary>
    public Outgoing? Seed(StageInput s, PipelineHop hop, KvCache cache, string firstHopPath)
    {
        if (s.Prefix is not { ReusedBlocks: >= 0 } plan || hop.LayerCount == 0) return null;
        var layers = Layers(hop);
        var key = (s.RequestId, hop.FirstLayer);
        Unpin(key);
        _pending.Remove(key);
        var mark = cache.Mark().Where(kv => !layers.Contains(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value);
        cache.Rollback(mark);
        var hashes = plan.BlockHashes.Select(h => unchecked((ulong)h)).ToArray();
        int need = plan.ReusedBlocks;
        if (plan.BlockTokens != _blockTokens || need > hashes.Length)
            throw new ProtocolException($"request {s.RequestId}: a prefix plan of {need} blocks of {plan.BlockTokens} tokens does not fit this stage's blocks of {_blockTokens}");
        if (need > 0)
        {
            int have = Cache.LongestPrefix(hashes, layers, need);
            if (have < need)
            {
                Restarts++;
                var prompt = plan.PromptIds;
                return new Outgoing(firstHopPath, s with
                {
                    Hop = 0, Hidden = null, InputIds = new[] { prompt },
                    AttentionMask = new[] { Enumerable.Repeat(1L, prompt.Length).ToArray() },
                    PositionIds = new[] { Enumerable.Range(0, prompt.Length).Select(p => (long)p).ToArray() },
                    Generation = s.Generation! with { Prefill = null },
                    Prefix = plan with { ReusedBlocks = -1, MaxBlocks = have },
                });
            }
            using (NewDisposeScope())
                foreach (int layer in layers)
                {
                    var blocks = hashes.Take(need).Select(h => Cache.Get(h, layer)).ToArray();
                    cache.Update(layer, cat(blocks.Select(b => b.K).ToArray(), 2), cat(blocks.Select(b => b.V).ToArray(), 2));
                }
            var pins = hashes.Take(need).ToList();
            foreach (var h in pins) Cache.Pin(h);
            _pins[key] = pins;
        }
        if (need < hashes.Length) _pending[key] = (hashes, need);
        return null;
    }

    /// <summary>After a step: keeps the prompt blocks this hop's layers have now complete for the request (a copy each).</summary>
    public void Store(StageInput s, PipelineHop hop, KvCache cache, long requestBytes)
    {
        if (hop.LayerCount == 0) return;
        var key = (s.RequestId, hop.FirstLayer);
        if (!_pending.TryGetValue(key, out var p)) return;
        long seen = cache.SeenTokens(hop.FirstLayer);
        int next = p.Next;
        using (NewDisposeScope())
            for (; next < p.Hashes.Length && (next + 1L) * _blockTokens <= seen; next++)
                for (int layer = hop.FirstLayer; layer < hop.FirstLayer + hop.LayerCount; layer++)
                {
                    var (k, v) = cache.Read(layer, (long)next * _blockTokens, _blockTokens);
                    Cache.Add(p.Hashes[next], layer, k, v, requestBytes);
                }
        if (next >= p.Hashes.Length) _pending.Remove(key);
        else _pending[key] = (p.Hashes, next);
    }

    /// <summary>A request ended here: its blocks are unpinned, nothing more of it is kept.</summary>
    public void Release(string requestId)
    {
        foreach (var key in _pins.Keys.Where(k => k.Id == requestId).ToList()) Unpin(key);
        foreach (var key in _pending.Keys.Where(k => k.Id == requestId).ToList()) _pending.Remove(key);
        _planned.Remove(requestId);
    }

    private void Unpin((string, int) key)
    {
        if (!_pins.Remove(key, out var pins)) return;
        foreach (var h in pins) Cache.Unpin(h);
    }

    private static HashSet<int> Layers(PipelineHop hop) => Enumerable.Range(hop.FirstLayer, hop.LayerCount).ToHashSet();

    public void Dispose() => Cache.Dispose();
}
