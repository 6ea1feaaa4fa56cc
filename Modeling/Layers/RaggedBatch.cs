using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// The requests of one decoder step, merged (continuous batching): each request's rows (B, T) are flattened into one
/// (N, H) tensor, one request after another, so that every row-wise part of a block — norms, projections, the MLP —
/// runs once for all of them and reads each weight once. Attention (<see cref="Attend"/>) keeps each request's own mask,
/// positions and KV cache: the decode segments (one new position per row, or a few: a speculative verification's
/// k + 1 ≤ <see cref="DecodeAttention.MaxPositions"/>) of every request attend in one call (<see cref="DecodeAttention"/>);
/// a longer segment (a prompt, a chunk of one) attends on its own (<see cref="Segment"/>). A single request is a batch of
/// one segment.
/// </summary>
public sealed class RaggedBatch
{
    /// <summary>One request's part: <see cref="Rows"/> × <see cref="Tokens"/> positions from <see cref="Offset"/> of the flat tensor.</summary>
    public sealed record Segment(long Rows, long Tokens, LayerInputs Inputs, long Offset)
    {
        public long Count => Rows * Tokens;
    }

    public IReadOnlyList<Segment> Segments { get; }
    /// <summary>N: the positions of every segment together.</summary>
    public long TotalTokens { get; }

    /// <param name="flatCos">The rotary tables of every position, (N, 1, D), made for the whole step at once
    /// (<c>MergedStepInputs</c>); null: joined from each segment's own.</param>
    public RaggedBatch(IEnumerable<(long Rows, long Tokens, LayerInputs Inputs)> parts, Tensor? flatCos = null, Tensor? flatSin = null)
    {
        var list = new List<Segment>();
        long offset = 0;
        foreach (var (rows, tokens, inputs) in parts)
        {
            if (rows < 1 || tokens < 1) throw new ArgumentException($"a segment needs at least one row and one token, not {rows}×{tokens}");
            list.Add(new Segment(rows, tokens, inputs, offset));
            offset += rows * tokens;
        }
        if (list.Count == 0) throw new ArgumentException("a batch needs at least one segment");
        Segments = list;
        TotalTokens = offset;
        // Each segment's rotary tables, flattened to one row per position (N, 1, D) like the hidden states: a block
        // rotates every request's queries and keys at once (a position's angles are its own, whoever it belongs to).
        if (flatCos is not null && flatSin is not null)
        {
            if (flatCos.Shape()[0] != offset || flatSin.Shape()[0] != offset) throw new ArgumentException($"rotary tables of {flatCos.Shape()[0]} positions for a batch of {offset}");
            FlatCos = flatCos;
            FlatSin = flatSin;
        }
        else if (list.All(x => x.Inputs?.Cos is not null && x.Inputs.Sin is not null))
        {
            Tensor Flat(Func<LayerInputs, Tensor> table) => list.Count == 1
                ? table(list[0].Inputs).reshape(list[0].Count, 1, -1)
                : cat(list.Select(x => table(x.Inputs).reshape(x.Count, -1)).ToArray(), 0).unsqueeze(1);
            FlatCos = Flat(i => i.Cos!);
            FlatSin = Flat(i => i.Sin!);
        }
    }

    /// <summary>The segments' rotary cos and sin tables, one row per position of the flat tensor: (N, 1, D); null for models without rotary embeddings.</summary>
    public Tensor? FlatCos { get; }
    public Tensor? FlatSin { get; }

    public static RaggedBatch Single(long rows, long tokens, LayerInputs inputs) => new(new[] { (rows, tokens, inputs) });

    /// <summary>A segment's positions of a flat (N, D) tensor, as (B, T, D).</summary>
    public static Tensor Of(Tensor flat, Segment s) => flat.narrow(0, s.Offset, s.Count).view(s.Rows, s.Tokens, flat.Shape()[1]);

    /// <summary>
    /// Runs <paramref name="perSegment"/> on each segment (which takes its positions with <see cref="Of"/>) and joins
    /// the (B, T, D') results back into one (N, D') tensor in segment order.
    /// </summary>
    public Tensor Map(Func<Segment, Tensor> perSegment)
    {
        if (Segments.Count == 1)
        {
            var only = perSegment(Segments[0]);
            return only.reshape(TotalTokens, only.Shape()[^1]);
        }
        var parts = Segments.Select(s =>
        {
            var y = perSegment(s);
            return y.reshape(s.Count, y.Shape()[^1]);
        }).ToArray();
        return cat(parts, 0);
    }

    /// <summary>Whether decode segments attend together through <see cref="DecodeAttention"/> (default); false: every segment on its own (what tests compare it with).</summary>
    public bool BatchedDecode { get; init; } = true;

    private IReadOnlyList<Segment>? _decode;

    /// <summary>The segments <see cref="DecodeAttention"/> takes (the same for every layer of the step).</summary>
    public IReadOnlyList<Segment> DecodeSegments => _decode ??= BatchedDecode ? Segments.Where(DecodeAttention.Takes).ToList() : Array.Empty<Segment>();

    /// <summary>
    /// A layer's attention over the batch: (N, heads·head_dim). <paramref name="q"/>, <paramref name="k"/>,
    /// <paramref name="v"/> hold every position's projections (rotated), N rows of heads·head_dim and
    /// kv_heads·head_dim. The decode segments attend together in one <see cref="DecodeAttention.Run"/> — so for a
    /// step of decode rows only, the layer's attention is about four libtorch calls (the output, views of q, k and v)
    /// whatever the number of requests — unless <paramref name="batched"/> is false (a family's exact eager path);
    /// every other segment runs <paramref name="perSegment"/> (its (B, T, heads·head_dim) result, as <see cref="Map"/>).
    /// </summary>
    public Tensor Attend(int layer, Tensor q, Tensor k, Tensor v, DecodeAttention.Shape shape, Func<Segment, Tensor> perSegment, bool batched = true)
    {
        var decode = batched ? DecodeSegments : Array.Empty<Segment>();
        if (decode.Count == 0 || !DecodeAttention.Supports(q)) return Map(perSegment);
        long n = TotalTokens;
        var output = empty(new[] { n, (long)shape.Heads * shape.HeadDim }, q.dtype, q.device);
        DecodeAttention.Run(layer, q.reshape(n, -1), k.reshape(n, -1), v.reshape(n, -1), shape, decode, output);
        if (decode.Count < Segments.Count)
            foreach (var s in Segments.Except(decode))
            {
                using var y = perSegment(s);
                output.narrow(0, s.Offset, s.Count).copy_(y.reshape(s.Count, y.Shape()[^1]));
            }
        return output;
    }

    /// <summary>The index, in the flat tensor, of each row's last position (segment order): what a head needs.</summary>
    public long[] LastPositions() =>
        Segments.SelectMany(s => Enumerable.Range(0, (int)s.Rows).Select(r => s.Offset + r * s.Tokens + s.Tokens - 1)).ToArray();
}
