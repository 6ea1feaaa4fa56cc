using ShardPipe.Modeling.Core;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Models;
using TorchSharp;
using static TorchSharp.torch;
using ShardPipe.Actors.Transport;

namespace ShardPipe.Actors.Workers;

/// <summary>A message to send, by actor path.</summary>
public readonly record struct Outgoing(string Path, object Message);

/// <summary>
/// One device worker's part of the pipeline, without the actor: runs the hops of the route that belong to this
/// worker on its slice of the model, keeps each request's KV cache for its layers, and at the last hop samples
/// and loops the next step back to the first hop. Pure TorchSharp; the actor around it only moves messages.
/// </summary>
public sealed class StageRunner : IDisposable
{
    private readonly CausalLMModel _model;
    private readonly PipelineHop[] _route;
    private readonly Dictionary<string, (KvCache Cache, DateTime LastUsed)> _caches = new();
    private readonly Dictionary<string, Sampler> _samplers = new();
    // Requests released here (finished, cancelled, failed, abandoned): a later step of one is dropped, never restarted.
    private readonly HashSet<string> _released = new(StringComparer.Ordinal);
    private readonly Queue<string> _releasedOrder = new();
    private const int RememberReleased = 4096;

    private readonly PrefixStage? _prefix;
    private DraftStage? _drafts; // draft-model speculation: made at the first stage when a request first asks for it

    /// <param name="prefix">Automatic prefix caching at this stage (<see cref="PrefixStage"/>), or null for none.</param>
    public StageRunner(CausalLMModel model, PipelineHop[] route, int epoch = 0, PrefixStage? prefix = null)
    {
        _model = model;
        _route = route;
        Epoch = epoch;
        _prefix = prefix;
    }

    /// <summary>Called between two layers of a step (the stage's compute thread adjusts its threads to its current share of the cores: <see cref="CoreArbiter"/>); null = nothing.</summary>
    public Action? BetweenLayers { get; set; }

    /// <summary>This stage's prefix cache (null when off): its blocks, bytes and hit counts.</summary>
    public PrefixStage? Prefix => _prefix;

    /// <summary>The plan epoch this stage serves; steps of any other epoch are late messages of an old route.</summary>
    public int Epoch { get; }

    public int ActiveRequests => _caches.Count;
    /// <summary>Bytes of this stage's request KV caches, draft models' included (they count in the prefix cache's max-bytes).</summary>
    public long CacheBytes => _caches.Values.Sum(c => c.Cache.Bytes) + (_drafts?.CacheBytes ?? 0);

    public IReadOnlyList<Outgoing> Run(StageInput input) => Run(new[] { input });

    /// <summary>
    /// One merged step (continuous batching): the steps of several requests at the same hop run together — every
    /// row-wise part of the stage once over all their positions, attention per request with its own cache
    /// (<see cref="RaggedBatch"/>). Each request's outputs are those of its step run alone. If the merged step fails, the
    /// caches are rolled back to where they were, so that the steps can run again one by one.
    /// </summary>
    public IReadOnlyList<Outgoing> Run(IReadOnlyList<StageInput> steps)
    {
        var live = steps.Where(s => !_released.Contains(s.RequestId)).ToList();
        if (live.Count == 0) return Array.Empty<Outgoing>();
        int hopIndex = live[0].Hop;
        bool forwardOnly = live[0].Generation is null;
        if (live.Any(s => s.Hop != hopIndex || (s.Generation is null) != forwardOnly) || forwardOnly && live.Count > 1)
            throw new ArgumentException("a merged step takes generation steps of one hop (a forward pass runs alone)");
        if (hopIndex < 0 || hopIndex >= _route.Length) throw new ProtocolException($"hop {hopIndex} is not on this route of {_route.Length} hops");
        var hop = _route[hopIndex];
        if (!forwardOnly && hop.Embed)
            for (int i = 0; i < live.Count; i++)
                if (DraftStage.Needs(live[i])) live[i] = (_drafts ??= new DraftStage(_model.VocabSize)).Fill(live[i]);
        // Prefix caching: the first hop plans a request's first step; each hop seeds its cache or sends it back.
        var restarts = forwardOnly || _prefix is null ? null : PrefixBefore(live, hop);
        if (live.Count == 0) return restarts!;
        // What a failed step must undo: each request's cache and, at the head, its sampler's random state (a sampler
        // made during the step is dropped), so that the step rerun — alone, or on another stage — draws the same tokens.
        var marks = forwardOnly ? null : live.Select(s => CacheFor(s.RequestId)).Select(c => (Cache: c, Mark: c.Mark())).ToList();
        var samplerMarks = forwardOnly ? null : live.Select(s => (s.RequestId, Mark: _samplers.TryGetValue(s.RequestId, out var sm) ? (Had: true, State: sm.Mark()) : (Had: false, State: null))).ToList();
        try
        {
            var output = RunMerged(live, hop, forwardOnly);
            return restarts is null ? output : PrefixAfter(live, hop, output, restarts);
        }
        catch when (marks is not null)
        {
            foreach (var (cache, mark) in marks) cache.Rollback(mark);
            foreach (var (id, mark) in samplerMarks!)
            {
                if (!_samplers.TryGetValue(id, out var sampler)) continue;
                if (mark.Had) sampler.Restore(mark.State);
                else { sampler.Dispose(); _samplers.Remove(id); }
            }
            throw;
        }
        finally
        {
            if (samplerMarks is not null) foreach (var (_, mark) in samplerMarks) mark.State?.Dispose();
        }
    }

    private IReadOnlyList<Outgoing> RunMerged(List<StageInput> steps, PipelineHop hop, bool forwardOnly)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        // Every request's positions as one flat (N, H) tensor, one request after another: embedded in one lookup at the
        // first hop, joined from the payloads after it.
        Tensor flat;
        (long Rows, long Tokens)[] sizes;
        if (hop.Embed)
        {
            foreach (var s in steps)
                if (s.InputIds is null) throw new ProtocolException($"hop {s.Hop} embeds but got no input ids");
            flat = MergedStepInputs.Embed(_model, steps.Select(s => (s.RequestId, s.InputIds, s.PositionIds, s.AttentionMask)).ToList());
            sizes = steps.Select(s => ((long)s.AttentionMask.Length, (long)s.PositionIds[0].Length)).ToArray();
        }
        else
        {
            var hidden = new Tensor[steps.Count];
            for (int i = 0; i < steps.Count; i++)
            {
                var s = steps[i];
                hidden[i] = s.Hidden is { } h ? TensorWire.ToTensor(h) : throw new ProtocolException($"hop {s.Hop} of request {s.RequestId} got no hidden states");
                // Layers need a hidden state per position; after the final norm only each row's last one travels.
                if (hidden[i].dim() != 3 || hidden[i].Shape()[0] != s.AttentionMask.Length || s.PositionIds.Length == 0 || hidden[i].Shape()[1] != s.PositionIds[0].Length && (hop.LayerCount > 0 || hidden[i].Shape()[1] != SpeculativeSteps.Kept(s)))
                    throw new ProtocolException($"request {s.RequestId}: hidden states of shape [{string.Join(", ", hidden[i].Shape())}] do not match its {s.AttentionMask.Length} rows of {(s.PositionIds.Length == 0 ? 0 : s.PositionIds[0].Length)} positions");
            }
            sizes = hidden.Select(h => (Rows: h.Shape()[0], Tokens: h.Shape()[1])).ToArray();
            long width = hidden[0].Shape()[2];
            flat = steps.Count == 1 ? hidden[0].reshape(sizes[0].Rows * sizes[0].Tokens, width)
                : cat(hidden.Select((h, i) => h.reshape(sizes[i].Rows * sizes[i].Tokens, width)).ToArray(), 0);
        }
        var batch = new RaggedBatch(sizes.Select((z, i) => (z.Rows, z.Tokens, (LayerInputs)null!)));
        if (hop.LayerCount > 0)
        {
            var made = new List<LayerInputs>();
            try
            {
                var parts = new List<MergedStepInputs.Part>(steps.Count);
                for (int i = 0; i < steps.Count; i++)
                {
                    var cache = forwardOnly ? null : CacheFor(steps[i].RequestId);
                    // Positions past the step's mask are rejected drafts of the step before (speculative decoding): dropped.
                    if (cache is not null && cache.SeenTokens(hop.FirstLayer) > SpeculativeSteps.CacheLength(steps[i], sizes[i].Tokens))
                        cache.Truncate(SpeculativeSteps.CacheLength(steps[i], sizes[i].Tokens));
                    long past = cache?.SeenTokens(hop.FirstLayer) ?? 0;
                    parts.Add(new MergedStepInputs.Part(steps[i].PositionIds, steps[i].AttentionMask, past, cache));
                }
                // One preparation for the whole step: rotary tables over every position, masks only for the parts that need one.
                batch = MergedStepInputs.Prepare(_model, parts, flat.dtype, hop.FirstLayer, made);
                for (int l = hop.FirstLayer; l < hop.FirstLayer + hop.LayerCount; l++)
                {
                    if (l > hop.FirstLayer) BetweenLayers?.Invoke();
                    flat = _model.Layer(l, flat, batch);
                }
            }
            finally
            {
                foreach (var li in made) li.Dispose();
            }
        }
        var output = new List<Outgoing>();
        if (!hop.Norm && !hop.Head)
        {
            for (int i = 0; i < steps.Count; i++)
                output.Add(Onward(steps[i], RaggedBatch.Of(flat, batch.Segments[i])));
            return output;
        }
        // Only each row's last position matters from here on (a speculative step's last token and drafts: Kept).
        var kept = steps.Select(SpeculativeSteps.Kept).ToArray();
        var last = kept.All(k => k == 1) ? flat.index_select(0, tensor(batch.LastPositions()))
            : flat.index_select(0, tensor(batch.Segments.SelectMany((g, i) => Enumerable.Range(0, (int)g.Rows)
                .SelectMany(r => Enumerable.Range(0, kept[i]).Select(j => g.Offset + r * g.Tokens + g.Tokens - kept[i] + j))).ToArray()));
        if (hop.Norm) last = _model.FinalNorm(last);
        var rowStart = new long[steps.Count];
        for (int i = 1; i < steps.Count; i++) rowStart[i] = rowStart[i - 1] + sizes[i - 1].Rows * kept[i - 1];
        if (!hop.Head)
        {
            for (int i = 0; i < steps.Count; i++)
                output.Add(Onward(steps[i], last.narrow(0, rowStart[i], sizes[i].Rows * kept[i]).view(sizes[i].Rows, kept[i], -1)));
            return output;
        }
        // The head: logits only for the rows whose prompt is all in (a request still prefilling loops its next chunk).
        var sampling = Enumerable.Range(0, steps.Count).Where(i => steps[i].Generation?.Prefill is null).ToList();
        Tensor? logits = null;
        if (sampling.Count > 0)
        {
            var rows = sampling.SelectMany(i => Enumerable.Range(0, (int)sizes[i].Rows * kept[i]).Select(r => rowStart[i] + r)).ToArray();
            var picked = rows.Length == last.Shape()[0] ? last : last.index_select(0, tensor(rows));
            logits = _model.Project(picked).to(ScalarType.Float32); // (R, V)
        }
        // Every greedy row's token from one argmax over the step's logits (each row's argmax is its own).
        var byArgmax = steps.Select(s => s.Generation is { Prefill: null, Speculate: null, Sampling: var g } && Sampler.TakesArgmax(g.Greedy, g.Temperature, g.RepetitionPenalty)).ToArray();
        long[]? argmax = byArgmax.Any(x => x) ? Sampler.ArgmaxRows(logits!) : null;
        long at = 0;
        for (int i = 0; i < steps.Count; i++)
        {
            var s = steps[i];
            if (s.Generation?.Prefill is { } rest)
            {
                output.Add(NextChunk(s, rest));
                continue;
            }
            long count = sizes[i].Rows * kept[i];
            var mine = logits!.narrow(0, at, count);
            if (forwardOnly)
            {
                output.Add(new(s.ReplyTo, new ForwardResult(s.RequestId, TensorWire.ToPayload(mine))));
                if (s.Coordinator is { } c) output.Add(new(c, new GenerationDone(s.RequestId, 0))); // frees its slot in the queue
            }
            else output.AddRange(Decide(s, mine, byArgmax[i] ? argmax!.AsSpan((int)at, (int)count).ToArray() : null));
            at += count;
        }
        return output;
    }

    /// <summary>A request's hidden states (B, T, H) on to the next hop.</summary>
    private Outgoing Onward(StageInput s, Tensor hidden) =>
        new(_route[s.Hop + 1].WorkerPath, s with { Hop = s.Hop + 1, Hidden = TensorWire.ToPayload(hidden), InputIds = null });

    /// <summary>A request still prefilling: its next chunk goes to the first hop (nothing is sampled yet).</summary>
    private Outgoing NextChunk(StageInput s, PromptRest rest)
    {
        var next = ChunkedPrefill.Next(s.AttentionMask, PromptRestWire.FromWire(rest));
        return new(_route[0].WorkerPath, SpeculativeSteps.WithDrafts(s with
        {
            Hop = 0, Hidden = null, InputIds = next.Ids, AttentionMask = next.Mask, PositionIds = next.Positions,
            Generation = s.Generation! with { Prefill = PromptRestWire.ToWire(next.Rest) },
        }));
    }

    /// <summary>The last hop: pick tokens, report them, and either loop to hop 0 or finish.</summary>
    /// <param name="argmax">The rows' tokens when its sampler takes the argmax (<see cref="Sampler.TakesArgmax"/>), picked for the whole step at once; null: the sampler picks.</param>
    private IReadOnlyList<Outgoing> Decide(StageInput input, Tensor logits, long[]? argmax)
    {
        var st = input.Generation!;
        var sampler = SamplerFor(input, logits.Shape()[0], logits.Shape()[1]);
        if (st.Speculate is not null) return Speculative(input, SpeculativeSteps.Decide(input, logits, sampler));
        var next = argmax ?? sampler.Next(logits, st.History);
        var finished = DecodeRule.Settle(next, st.Finished, new StopTokens(st.EosTokenIds, st.PadTokenId), st.IgnoreEos);
        var tokens = new Outgoing(input.ReplyTo, new TokensGenerated(input.RequestId, input.Step, next));
        if (DecodeRule.Done(input.Step + 1, st.MaxNewTokens, finished)) return Finish(input, tokens, input.Step + 1);
        var (mask, positions) = DecodeRule.Advance(input.AttentionMask);
        // The next step goes first: it is the pipeline's critical path; the caller's copy of the tokens can follow.
        return new[]
        {
            new Outgoing(_route[0].WorkerPath, input with
            {
                Step = input.Step + 1, Hop = 0, Hidden = null, InputIds = next.Select(x => new[] { x }).ToArray(),
                AttentionMask = mask, PositionIds = positions,
                Generation = st with { Finished = finished, History = st.History?.Select((h, b) => h.Append(next[b]).ToArray()).ToArray() },
            }),
            tokens,
        };
    }

    /// <summary>The request's sampler, made at its first sampled step (<paramref name="rows"/> × <paramref name="vocab"/> logits).</summary>
    private Sampler SamplerFor(StageInput input, long rows, long vocab)
    {
        var st = input.Generation!;
        if (!_samplers.TryGetValue(input.RequestId, out var sampler))
        {
            _samplers[input.RequestId] = sampler = new Sampler(st.Sampling.Greedy, st.Sampling.Temperature, st.Sampling.TopK, st.Sampling.TopP, st.Sampling.Seed, st.Sampling.RepetitionPenalty);
            // A resumed request starts at a later step: its sampler continues where the lost one stopped.
            if (input.Step > 0 && st.Speculate is null) sampler.Skip(input.Step, rows, vocab);
        }
        return sampler;
    }

    /// <summary>A speculative step's verdict as messages: the next step first (unless done), then the tokens.</summary>
    private IReadOnlyList<Outgoing> Speculative(StageInput input, SpeculativeSteps.Verdict v)
    {
        var tokens = new Outgoing(input.ReplyTo, v.Tokens);
        if (v.Next is { } next) return new[] { new Outgoing(_route[0].WorkerPath, next), tokens };
        return Finish(input, tokens, v.Produced);
    }

    private List<Outgoing> Finish(StageInput input, Outgoing tokens, int steps)
    {
        var output = new List<Outgoing> { tokens };
        output.Add(new(input.ReplyTo, new GenerationDone(input.RequestId, steps)));
        if (input.Coordinator is { } c) output.Add(new(c, new GenerationDone(input.RequestId, steps)));
        foreach (var path in _route.Select(r => r.WorkerPath).Distinct())
            output.Add(new(path, new ReleaseRequest(input.RequestId)));
        return output;
    }

    /// <summary>Plans (first hop) and seeds each step's prefix; takes out of <paramref name="live"/> the steps sent back to the first hop, and returns those.</summary>
    private List<Outgoing> PrefixBefore(List<StageInput> live, PipelineHop hop)
    {
        var back = new List<Outgoing>();
        for (int i = live.Count - 1; i >= 0; i--)
        {
            live[i] = _prefix!.Plan(live[i], hop);
            if (_prefix.Seed(live[i], hop, CacheFor(live[i].RequestId), _route[0].WorkerPath) is { } restart)
            {
                back.Add(restart);
                live.RemoveAt(i);
            }
        }
        return back;
    }

    /// <summary>Keeps the prompt blocks the step completed; a request's next step (back at the first hop) carries no plan.</summary>
    private IReadOnlyList<Outgoing> PrefixAfter(List<StageInput> live, PipelineHop hop, IReadOnlyList<Outgoing> output, List<Outgoing> restarts)
    {
        long requestBytes = CacheBytes;
        foreach (var s in live)
            if (_caches.TryGetValue(s.RequestId, out var e)) _prefix!.Store(s, hop, e.Cache, requestBytes);
        _prefix!.Cache.EvictToFit(requestBytes);
        var all = new List<Outgoing>(output.Count + restarts.Count);
        foreach (var o in output)
            all.Add(o.Message is StageInput { Hop: 0, Prefix: not null } next ? o with { Message = next with { Prefix = null } } : o);
        all.AddRange(restarts);
        return all;
    }

    private KvCache CacheFor(string requestId)
    {
        if (!_caches.TryGetValue(requestId, out var entry)) entry = (new KvCache(), DateTime.UtcNow);
        _caches[requestId] = (entry.Cache, DateTime.UtcNow);
        return entry.Cache;
    }

    public void Release(string requestId)
    {
        if (_released.Add(requestId))
        {
            _releasedOrder.Enqueue(requestId);
            if (_releasedOrder.Count > RememberReleased) _released.Remove(_releasedOrder.Dequeue());
        }
        if (_caches.Remove(requestId, out var e)) e.Cache.Dispose();
        if (_samplers.Remove(requestId, out var s)) s.Dispose();
        _prefix?.Release(requestId);
        _drafts?.Release(requestId);
    }

    /// <summary>Frees the caches of requests idle longer than <paramref name="idle"/> (abandoned by their caller).</summary>
    public int EvictIdle(TimeSpan idle)
    {
        var stale = _caches.Where(kv => DateTime.UtcNow - kv.Value.LastUsed > idle).Select(kv => kv.Key).ToList();
        foreach (var id in stale) Release(id);
        return stale.Count;
    }

    public void Dispose()
    {
        foreach (var id in _caches.Keys.ToList()) Release(id);
        foreach (var id in _samplers.Keys.ToList()) Release(id);
        _prefix?.Dispose();
        _drafts?.Dispose();
    }
}
