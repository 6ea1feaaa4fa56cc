using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Layers;

/// <summary>
/// Keys and values of past tokens, per decoder layer (keyed by the layer's global index, so a pipeline stage
/// holds only its own layers). Shapes (B, kv_heads, T, head_dim). Disposing frees every tensor.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Dictionary<int, (Tensor K, Tensor V)> _layers = new();

    /// <summary>Tokens already in the cache (same for every layer once a forward pass completes).</summary>
    public long SeenTokens(int layer) => _layers.TryGetValue(layer, out var kv) ? kv.K.shape[2] : 0;

    /// <summary>Appends this step's keys and values; returns the full (past + new) tensors, owned by the cache.</summary>
    public (Tensor K, Tensor V) Update(int layer, Tensor k, Tensor v)
    {
        if (_layers.TryGetValue(layer, out var past))
        {
            // The cache outlives the forward pass's dispose scope.
            var nk = torch.cat(new[] { past.K, k }, 2).DetachFromDisposeScope();
            var nv = torch.cat(new[] { past.V, v }, 2).DetachFromDisposeScope();
            past.K.Dispose();
            past.V.Dispose();
            _layers[layer] = (nk, nv);
            return (nk, nv);
        }
        var ck = k.alias().DetachFromDisposeScope();
        var cv = v.alias().DetachFromDisposeScope();
        _layers[layer] = (ck, cv);
        return (ck, cv);
    }

    /// <summary>Each layer's length now, to <see cref="Rollback"/> to if the step under way fails.</summary>
    public IReadOnlyDictionary<int, long> Mark() => _layers.ToDictionary(kv => kv.Key, kv => kv.Value.K.shape[2]);

    /// <summary>Forgets what steps appended since <paramref name="mark"/> (a merged step that failed part-way; it is run again).</summary>
    public void Rollback(IReadOnlyDictionary<int, long> mark)
    {
        foreach (var layer in _layers.Keys.ToList())
        {
            var (k, v) = _layers[layer];
            if (!mark.TryGetValue(layer, out long length))
            {
                k.Dispose();
                v.Dispose();
                _layers.Remove(layer);
            }
            else if (k.shape[2] > length)
            {
                _layers[layer] = (k.narrow(2, 0, length).DetachFromDisposeScope(), v.narrow(2, 0, length).DetachFromDisposeScope());
                k.Dispose();
                v.Dispose();
            }
        }
    }

    public long Bytes => _layers.Values.Sum(kv => kv.K.NumberOfElements * kv.K.ElementSize * 2);

    public void Dispose()
    {
        foreach (var (k, v) in _layers.Values)
        {
            k.Dispose();
            v.Dispose();
        }
        _layers.Clear();
    }
}
