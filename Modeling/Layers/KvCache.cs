using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// Keys and values of past tokens, per decoder layer (keyed by the layer's global index, so a pipeline stage
/// holds only its own layers). Each layer keeps one buffer per K and V, (B, kv_heads, capacity, head_dim), that
/// doubles when full: a step writes only its own positions and reads the filled part as a view, instead of copying
/// the whole past into a new tensor every step. Disposing frees every buffer.
/// </summary>
public sealed class KvCache : IDisposable
{
    /// <summary>Positions a layer's first buffer holds at least (a prefill longer than this gets its own length).</summary>
    public const long InitialCapacity = 64;

    private sealed class Buffers(Tensor k, Tensor v, long length)
    {
        public Tensor K = k, V = v;
        public long Length = length;
        public long Capacity => K.shape[2];
    }

    private readonly Dictionary<int, Buffers> _layers = new();

    /// <summary>Tokens already in the cache (same for every layer once a forward pass completes).</summary>
    public long SeenTokens(int layer) => _layers.TryGetValue(layer, out var b) ? b.Length : 0;

    /// <summary>
    /// Appends this step's keys and values (B, kv_heads, T, head_dim); returns the past and new positions together, as
    /// views of the cache's buffers (valid until the next update of this layer).
    /// </summary>
    public (Tensor K, Tensor V) Update(int layer, Tensor k, Tensor v)
    {
        long t = k.shape[2];
        if (!_layers.TryGetValue(layer, out var b))
        {
            _layers[layer] = b = new Buffers(Allocate(k, Math.Max(InitialCapacity, t)), Allocate(v, Math.Max(InitialCapacity, t)), 0);
        }
        else if (b.Length + t > b.Capacity)
        {
            long capacity = Math.Max(2 * b.Capacity, b.Length + t);
            var nk = Allocate(k, capacity);
            var nv = Allocate(v, capacity);
            nk.narrow(2, 0, b.Length).copy_(b.K.narrow(2, 0, b.Length));
            nv.narrow(2, 0, b.Length).copy_(b.V.narrow(2, 0, b.Length));
            b.K.Dispose();
            b.V.Dispose();
            b.K = nk;
            b.V = nv;
        }
        b.K.narrow(2, b.Length, t).copy_(k);
        b.V.narrow(2, b.Length, t).copy_(v);
        b.Length += t;
        return (b.K.narrow(2, 0, b.Length), b.V.narrow(2, 0, b.Length));
    }

    /// <summary>One layer's keys and values at positions [<paramref name="start"/>, + <paramref name="length"/>), as views (valid until the next update of the layer); prefix caching copies prompt blocks from them.</summary>
    public (Tensor K, Tensor V) Read(int layer, long start, long length)
    {
        if (!_layers.TryGetValue(layer, out var b) || start < 0 || length < 0 || start + length > b.Length)
            throw new ArgumentOutOfRangeException(nameof(start), $"layer {layer} holds {SeenTokens(layer)} positions, not [{start}, {start + length})");
        return (b.K.narrow(2, start, length), b.V.narrow(2, start, length));
    }

    /// <summary>A buffer like <paramref name="like"/> with room for <paramref name="capacity"/> positions; it outlives the forward pass's dispose scope.</summary>
    private static Tensor Allocate(Tensor like, long capacity) =>
        empty(new[] { like.shape[0], like.shape[1], capacity, like.shape[3] }, like.dtype, like.device).DetachFromDisposeScope();

    /// <summary>Each layer's length now, to <see cref="Rollback"/> to if the step under way fails.</summary>
    public IReadOnlyDictionary<int, long> Mark() => _layers.ToDictionary(kv => kv.Key, kv => kv.Value.Length);

    /// <summary>Forgets what steps appended since <paramref name="mark"/> (a merged step that failed part-way; it is run again).</summary>
    public void Rollback(IReadOnlyDictionary<int, long> mark)
    {
        foreach (var layer in _layers.Keys.ToList())
        {
            var b = _layers[layer];
            if (mark.TryGetValue(layer, out long length)) b.Length = Math.Min(b.Length, length);
            else
            {
                b.K.Dispose();
                b.V.Dispose();
                _layers.Remove(layer);
            }
        }
    }

    /// <summary>Bytes the cache holds (its buffers, filled or not).</summary>
    public long Bytes => _layers.Values.Sum(b => b.K.NumberOfElements * b.K.ElementSize * 2);

    public void Dispose()
    {
        foreach (var b in _layers.Values)
        {
            b.K.Dispose();
            b.V.Dispose();
        }
        _layers.Clear();
    }
}
