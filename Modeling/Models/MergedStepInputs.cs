using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Models;

/// <summary>
/// What a merged step (continuous batching: several requests' steps through one stage) prepares once for all its
/// requests instead of once per request: one embedding lookup over every position of every request, and one set of
/// rotary tables over every position (the flat (N, 1, D) layout the blocks read). A request's own mask is built only
/// when it needs one — a prompt or chunk of several positions, a left-padded row, a sliding window its keys pass;
/// a plain decode row (one new position that sees all its past) needs none, so a step of decode rows costs a fixed
/// handful of libtorch calls whatever the number of requests. The result equals each request prepared alone
/// (<see cref="CausalLMModel.PrepareLayerInputs"/>): the same tables per position, the same masks.
/// </summary>
public static class MergedStepInputs
{
    /// <summary>One request's part of a merged step: its rows' positions and 2-D mask, what its cache already holds, its cache.</summary>
    public sealed record Part(long[][] PositionIds, long[][] AttentionMask, long PastLength, KvCache? Cache)
    {
        public long Rows => PositionIds.Length;
        public long Tokens => PositionIds.Length == 0 ? 0 : PositionIds[0].Length;
    }

    /// <summary>Rows (B, T) of ids, checked rectangular and of <paramref name="rows"/> × <paramref name="tokens"/>, appended row by row to <paramref name="into"/>.</summary>
    private static void Append(List<long> into, long[][]? ids, long rows, long tokens, string what, string request)
    {
        if (ids is null || ids.Length != rows || ids.Any(r => r is null || r.Length != tokens))
            throw new ProtocolException($"request {request}: its {what} are not {rows} rows of {tokens} positions");
        foreach (var r in ids) into.AddRange(r);
    }

    /// <summary>
    /// The token (and position) embeddings of every request's ids in one lookup: (N, H), one request after another,
    /// each row by row — the flat layout of a <see cref="RaggedBatch"/>. Each request's ids and positions must be its
    /// mask's rows of equal length.
    /// </summary>
    public static Tensor Embed(CausalLMModel model, IReadOnlyList<(string Request, long[][]? InputIds, long[][] PositionIds, long[][] AttentionMask)> steps)
    {
        var ids = new List<long>();
        var positions = new List<long>();
        foreach (var (request, inputIds, positionIds, mask) in steps)
        {
            long rows = mask.Length, tokens = positionIds.Length > 0 && positionIds[0] is { } p0 ? p0.Length : 0;
            if (rows < 1 || tokens < 1) throw new ProtocolException($"request {request}: a step needs at least one row and one position");
            Append(positions, positionIds, rows, tokens, "position ids", request);
            Append(ids, inputIds, rows, tokens, "input ids", request);
        }
        long n = ids.Count;
        using var idTensor = tensor(ids.ToArray(), new[] { 1L, n });
        using var positionTensor = tensor(positions.ToArray(), new[] { 1L, n });
        using var embedded = model.Embed(idTensor, positionTensor); // (1, N, H)
        return embedded.reshape(n, embedded.Shape()[2]);
    }

    /// <summary>
    /// Whether a part is a plain decode step: one position per row, no left padding, keys within the model's sliding
    /// window. Its family would give it no mask (or, GPT-2, an all-zero one: the same scores), and its rotary tables
    /// come from the merged step's.
    /// </summary>
    public static bool PlainDecode(Part p, long? slidingWindow) =>
        p.Tokens == 1 && p.Cache is not null && p.AttentionMask.All(r => Array.IndexOf(r, 0L) < 0)
        && (slidingWindow is not { } w || p.PastLength + 1 <= w);

    /// <summary>
    /// The layer inputs of a merged step at a stage whose first layer is <paramref name="firstLayer"/>: a
    /// <see cref="RaggedBatch"/> over the parts, with the rotary tables of every position from one call, and each
    /// part's mask (built for that part alone, as <see cref="CausalLMModel.PrepareLayerInputs"/> does, unless it is a
    /// plain decode step). The <see cref="LayerInputs"/> made are added to <paramref name="made"/> (the caller disposes
    /// them), and the batch's flat tables are its own to dispose.
    /// </summary>
    public static RaggedBatch Prepare(CausalLMModel model, IReadOnlyList<Part> parts, ScalarType dtype, int firstLayer, List<LayerInputs> made, bool batchedDecode = true)
    {
        var inputs = new LayerInputs[parts.Count];
        var unused = zeros(0, dtype: ScalarType.Int64); // LayerInputs.PositionIds: the blocks read the flat tables, not these
        var flatPositions = new List<long>();
        for (int i = 0; i < parts.Count; i++)
        {
            var p = parts[i];
            long keys = p.PastLength + p.Tokens;
            if (p.Rows < 1 || p.Tokens < 1 || p.PositionIds.Any(r => r is null || r.Length != p.Tokens) || p.AttentionMask.Length != p.Rows
                || p.AttentionMask.Any(r => r is null || r.Length != p.AttentionMask[0].Length) || p.AttentionMask[0].Length < keys)
                throw new ProtocolException($"part {i} of a merged step: {p.Rows} rows of position ids and {p.AttentionMask.Length} mask rows " +
                                            $"do not make rectangular rows of {p.Tokens} new positions with masks over at least {keys} keys");
            foreach (var r in p.PositionIds) flatPositions.AddRange(r);
            if (PlainDecode(p, model.SlidingWindow))
                inputs[i] = new LayerInputs { PositionIds = unused, Mask = null, IsPlainCausal = false, Cache = p.Cache };
            else
            {
                using var positions = Generation.IdRows.ToTensor(p.PositionIds);
                using var mask = Generation.IdRows.ToTensor(p.AttentionMask);
                var own = model.PrepareLayerInputs(positions, mask, p.PastLength, p.Tokens, dtype, CPU, p.Cache, firstLayer);
                made.Add(own);
                // Its own tables are not needed (the merged step's cover every position): only its mask and causal flag.
                inputs[i] = new LayerInputs { PositionIds = unused, Mask = own.Mask, IsPlainCausal = own.IsPlainCausal, Cache = p.Cache };
            }
        }
        // Every position's rotary tables in one call: positions as (N, 1) — one new position per "row" — give (N, 1, D).
        long n = flatPositions.Count;
        using var all = tensor(flatPositions.ToArray(), new[] { n, 1L });
        var tables = model.PrepareLayerInputs(all, null, 0, 1, dtype, CPU, null, firstLayer);
        made.Add(tables);
        var batch = new RaggedBatch(parts.Select((p, i) => (p.Rows, p.Tokens, inputs[i])),
            tables.Cos?.reshape(n, 1, -1), tables.Sin?.reshape(n, 1, -1)) { BatchedDecode = batchedDecode };
        return batch;
    }
}
