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

    public StageRunner(CausalLMModel model, PipelineHop[] route, int epoch = 0)
    {
        _model = model;
        _route = route;
        Epoch = epoch;
    }

    /// <summary>The plan epoch this stage serves; steps of any other epoch are late messages of an old route.</summary>
    public int Epoch { get; }

    public int ActiveRequests => _caches.Count;
    public long CacheBytes => _caches.Values.Sum(c => c.Cache.Bytes);

    public IReadOnlyList<Outgoing> Run(StageInput input)
    {
        if (_released.Contains(input.RequestId)) return Array.Empty<Outgoing>();
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var hop = _route[input.Hop];
        var mask = IdRows.ToTensor(input.AttentionMask);
        var positions = IdRows.ToTensor(input.PositionIds);
        Tensor hidden = input.Hidden is { } h ? TensorWire.ToTensor(h) : null!;
        bool forwardOnly = input.Generation is null;
        if (hop.Embed)
        {
            var ids = IdRows.ToTensor(input.InputIds ?? throw new ProtocolException($"hop {input.Hop} embeds but got no input ids"));
            hidden = _model.Embed(ids, positions);
        }
        if (hop.LayerCount > 0)
        {
            var cache = forwardOnly ? null : CacheFor(input.RequestId);
            long t = hidden.shape[1];
            long past = cache?.SeenTokens(hop.FirstLayer) ?? 0;
            using var inputs = _model.PrepareLayerInputs(positions, mask, past, t, hidden.dtype, CPU, cache, hop.FirstLayer);
            for (int i = hop.FirstLayer; i < hop.FirstLayer + hop.LayerCount; i++) hidden = _model.Layer(i, hidden, inputs);
        }
        if (hop.Norm || hop.Head)
            hidden = hidden.narrow(1, hidden.shape[1] - 1, 1); // only the last position matters from here on
        if (hop.Norm) hidden = _model.FinalNorm(hidden);
        if (!hop.Head)
            return new[] { new Outgoing(_route[input.Hop + 1].WorkerPath, input with { Hop = input.Hop + 1, Hidden = TensorWire.ToPayload(hidden), InputIds = null }) };

        var logits = _model.Project(hidden).select(1, 0).to(ScalarType.Float32); // (B, V)
        if (forwardOnly)
        {
            var result = new List<Outgoing> { new(input.ReplyTo, new ForwardResult(input.RequestId, TensorWire.ToPayload(logits))) };
            if (input.Coordinator is { } c) result.Add(new(c, new GenerationDone(input.RequestId, 0))); // frees its slot in the queue
            return result;
        }
        return Decide(input, logits);
    }

    /// <summary>The last hop: pick tokens, report them, and either loop to hop 0 or finish.</summary>
    private IReadOnlyList<Outgoing> Decide(StageInput input, Tensor logits)
    {
        var st = input.Generation!;
        if (!_samplers.TryGetValue(input.RequestId, out var sampler))
        {
            _samplers[input.RequestId] = sampler = new Sampler(st.Sampling.Greedy, st.Sampling.Temperature, st.Sampling.TopK, st.Sampling.TopP, st.Sampling.Seed, st.Sampling.RepetitionPenalty);
            // A resumed request starts at a later step: its sampler continues where the lost one stopped.
            if (input.Step > 0) sampler.Skip(input.Step, logits.shape[0], logits.shape[1]);
        }
        var next = sampler.Next(logits, st.History);
        var finished = DecodeRule.Settle(next, st.Finished, new StopTokens(st.EosTokenIds, st.PadTokenId), st.IgnoreEos);
        var tokens = new Outgoing(input.ReplyTo, new TokensGenerated(input.RequestId, input.Step, next));
        if (DecodeRule.Done(input.Step + 1, st.MaxNewTokens, finished))
        {
            var output = new List<Outgoing> { tokens };
            output.Add(new(input.ReplyTo, new GenerationDone(input.RequestId, input.Step + 1)));
            if (input.Coordinator is { } c) output.Add(new(c, new GenerationDone(input.RequestId, input.Step + 1)));
            foreach (var path in _route.Select(r => r.WorkerPath).Distinct())
                output.Add(new(path, new ReleaseRequest(input.RequestId)));
            return output;
        }
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
    }
}
