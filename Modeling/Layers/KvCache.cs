using ShardPipe.Modeling.Core;
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
        public long Capacity => K.Shape()[2];
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
        long t = k.Shape()[2];
        var b = Room(layer, k.Shape(), v.Shape(), k.dtype, k.device, t);
        b.K.narrow(2, b.Length, t).copy_(k);
        b.V.narrow(2, b.Length, t).copy_(v);
        b.Length += t;
        return (b.K.narrow(2, 0, b.Length), b.V.narrow(2, 0, b.Length));
    }

    /// <summary>
    /// For a kernel that writes a step's positions itself (<see cref="DecodeAttention"/>): makes room for
    /// <paramref name="tokens"/> more positions of <paramref name="layer"/> (its buffers made for rows × heads × headDim
    /// of <paramref name="dtype"/> on first use), counts them as filled, and returns the layer's whole buffers
    /// (B, kv_heads, capacity, head_dim) with the index of the first new position. The caller writes those positions
    /// before anything reads the layer; <see cref="Rollback"/> forgets them like any others.
    /// </summary>
    public (Tensor K, Tensor V, long Start) Append(int layer, long rows, long heads, long headDim, ScalarType dtype, Device device, long tokens)
    {
        if (_layers.TryGetValue(layer, out var had) && (had.K.Shape() is var held) && (held[0] != rows || held[1] != heads || held[3] != headDim || had.K.dtype != dtype))
            throw new ArgumentException($"layer {layer}'s cache holds [{string.Join(", ", held)}] {had.K.dtype}, not {rows}×{heads}×{headDim} {dtype}");
        var shape = new[] { rows, heads, 0, headDim };
        var b = Room(layer, shape, shape, dtype, device, tokens);
        long start = b.Length;
        b.Length += tokens;
        return (b.K, b.V, start);
    }

    /// <summary>The layer's buffers with room for <paramref name="t"/> more positions (made, or doubled and the filled part copied over).</summary>
    private Buffers Room(int layer, long[] kShape, long[] vShape, ScalarType dtype, Device device, long t)
    {
        if (!_layers.TryGetValue(layer, out var b))
        {
            _layers[layer] = b = new Buffers(Allocate(kShape, dtype, device, Math.Max(InitialCapacity, t)), Allocate(vShape, dtype, device, Math.Max(InitialCapacity, t)), 0);
        }
        else if (b.Length + t > b.Capacity)
        {
            long capacity = Math.Max(2 * b.Capacity, b.Length + t);
            var nk = Allocate(kShape, dtype, device, capacity);
            var nv = Allocate(vShape, dtype, device, capacity);
            nk.narrow(2, 0, b.Length).copy_(b.K.narrow(2, 0, b.Length));
            nv.narrow(2, 0, b.Length).copy_(b.V.narrow(2, 0, b.Length));
            b.K.Dispose();
            b.V.Dispose();
            b.K = nk;
            b.V = nv;
        }
        return b;
    }

    /// <summary>A buffer of a step's (B, kv_heads, T, head_dim) shape with room for <paramref name="capacity"/> positions; it outlives the forward pass's dispose scope.</summary>
    private static Tensor Allocate(long[] shape, ScalarType dtype, Device device, long capacity) =>
        empty(new[] { shape[0], shape[1], capacity, shape[3] }, dtype, device).DetachFromDisposeScope();

    /// <summary>One layer's keys and values at positions [<paramref name="start"/>, + <paramref name="length"/>), as views (valid until the next update of the layer); prefix caching copies prompt blocks from them.</summary>
    public (Tensor K, Tensor V) Read(int layer, long start, long length)
    {
        if (!_layers.TryGetValue(layer, out var b) || start < 0 || length < 0 || start + length > b.Length)
            throw new ArgumentOutOfRangeException(nameof(start), $"layer {layer} holds {SeenTokens(layer)} positions, not [{start}, {start + length})");
        return (b.K.narrow(2, start, length), b.V.narrow(2, start, length));
    }

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

    /// <summary>
    /// Keeps only the first <paramref name="length"/> positions of every layer (speculative decoding: the positions of
    /// rejected draft tokens are dropped; the buffers stay, and the next step overwrites them).
    /// </summary>
    public void Truncate(long length)
    {
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), length, "a cache cannot be truncated below 0 positions");
        foreach (var b in _layers.Values) b.Length = Math.Min(b.Length, length);
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
