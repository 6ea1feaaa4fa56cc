using System.IO.Hashing;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// A stage's cache of prompt blocks (automatic prefix caching): the keys and values of full blocks of prompt tokens,
/// per layer of the stage, keyed by a chain hash of every token up to and including the block
/// (<see cref="ChainHashes"/>), so that a block's entry is valid only after the very same prefix. Blocks in use by a
/// request are pinned (reference-counted) and never evicted; the others go least recently used first when the cache
/// and what the stage's requests hold would pass the byte budget. Single-threaded (the stage's compute thread).
/// </summary>
public sealed class PrefixCache : IDisposable
{
    private sealed class Entry(ulong hash)
    {
        public readonly ulong Hash = hash;
        public readonly Dictionary<int, (Tensor K, Tensor V)> Layers = new();
        public int Refs;
        public long Bytes;
        public LinkedListNode<Entry>? Node;
    }

    private readonly Dictionary<ulong, Entry> _entries = new();
    private readonly LinkedList<Entry> _lru = new(); // first = least recently used

    /// <param name="capacityBytes">The most bytes the cache and the stage's request caches may hold together.</param>
    public PrefixCache(long capacityBytes)
    {
        if (capacityBytes < 0) throw new InvalidInputException($"a prefix cache's capacity must not be negative, not {capacityBytes}");
        CapacityBytes = capacityBytes;
    }

    public long CapacityBytes { get; }

    /// <summary>Bytes of the cached blocks' tensors.</summary>
    public long Bytes { get; private set; }

    public int Blocks => _entries.Count;

    public long Evictions { get; private set; }

    /// <summary>The identity every chain starts from: the served model's plan epoch and the block size.</summary>
    public static ulong Identity(int epoch, int blockTokens) =>
        XxHash3.HashToUInt64(MemoryMarshal.AsBytes(stackalloc long[] { 0x5348_5052_4546_4958L, epoch, blockTokens }));

    /// <summary>
    /// The chain hash of each full block of <paramref name="tokens"/>: block i's hash covers the previous block's hash and
    /// its own tokens, so it names every token from the start up to the end of block i (and <paramref name="identity"/>).
    /// A partial last block has none.
    /// </summary>
    public static ulong[] ChainHashes(ReadOnlySpan<long> tokens, int blockTokens, ulong identity)
    {
        if (blockTokens < 1) throw new InvalidInputException($"a prefix cache's block must hold at least 1 token, not {blockTokens}");
        var hashes = new ulong[tokens.Length / blockTokens];
        var buffer = new long[blockTokens + 1];
        ulong previous = identity;
        for (int b = 0; b < hashes.Length; b++)
        {
            buffer[0] = unchecked((long)previous);
            tokens.Slice(b * blockTokens, blockTokens).CopyTo(buffer.AsSpan(1));
            previous = hashes[b] = XxHash3.HashToUInt64(MemoryMarshal.AsBytes(buffer.AsSpan()));
        }
        return hashes;
    }

    /// <summary>How many leading blocks of <paramref name="hashes"/> (at most <paramref name="max"/>) are cached with every one of <paramref name="layers"/>; those become the most recently used.</summary>
    public int LongestPrefix(IReadOnlyList<ulong> hashes, IReadOnlyCollection<int> layers, int max = int.MaxValue)
    {
        int n = 0;
        while (n < Math.Min(max, hashes.Count) && _entries.TryGetValue(hashes[n], out var e) && layers.All(e.Layers.ContainsKey))
        {
            Touch(e);
            n++;
        }
        return n;
    }

    public bool Contains(ulong hash, int layer) => _entries.TryGetValue(hash, out var e) && e.Layers.ContainsKey(layer);

    /// <summary>A cached block's keys and values for one layer (the cache's own tensors: copy before changing them).</summary>
    public (Tensor K, Tensor V) Get(ulong hash, int layer)
    {
        var e = _entries.TryGetValue(hash, out var found) ? found : throw new KeyNotFoundException($"block {hash:x16} is not cached");
        Touch(e);
        return e.Layers[layer];
    }

    /// <summary>A request uses the block: it is not evicted until as many <see cref="Unpin"/>s.</summary>
    public void Pin(ulong hash)
    {
        if (_entries.TryGetValue(hash, out var e)) e.Refs++;
    }

    public void Unpin(ulong hash)
    {
        if (_entries.TryGetValue(hash, out var e) && e.Refs > 0) e.Refs--;
    }

    public int RefCount(ulong hash) => _entries.TryGetValue(hash, out var e) ? e.Refs : 0;

    /// <summary>
    /// Keeps a copy of one layer's keys and values (1, kv_heads, block, head_dim) for the block, evicting unpinned blocks
    /// least recently used first so that the cache plus <paramref name="otherBytes"/> (the requests' caches) stay within the
    /// capacity. False (nothing kept) when it cannot fit, or the layer is cached already.
    /// </summary>
    public bool Add(ulong hash, int layer, Tensor k, Tensor v, long otherBytes)
    {
        if (_entries.TryGetValue(hash, out var e) && e.Layers.ContainsKey(layer)) { Touch(e); return false; }
        long bytes = (k.NumberOfElements * k.ElementSize) + (v.NumberOfElements * v.ElementSize);
        if (!EvictToFit(otherBytes + bytes, keep: e)) return false;
        if (e is null)
        {
            _entries[hash] = e = new Entry(hash);
            e.Node = _lru.AddLast(e);
        }
        else Touch(e);
        e.Layers[layer] = (k.detach().clone().DetachFromDisposeScope(), v.detach().clone().DetachFromDisposeScope());
        e.Bytes += bytes;
        Bytes += bytes;
        return true;
    }

    /// <summary>Evicts unpinned blocks, least recently used first, until the cache plus <paramref name="otherBytes"/> fit the capacity; false if they cannot.</summary>
    public bool EvictToFit(long otherBytes) => EvictToFit(otherBytes, keep: null);

    private bool EvictToFit(long otherBytes, Entry? keep)
    {
        var node = _lru.First;
        while (Bytes + otherBytes > CapacityBytes && node is not null)
        {
            var next = node.Next;
            if (node.Value.Refs == 0 && node.Value != keep) Remove(node.Value);
            node = next;
        }
        return Bytes + otherBytes <= CapacityBytes;
    }

    /// <summary>Drops one unpinned block now (false when it is pinned or absent).</summary>
    public bool Evict(ulong hash)
    {
        if (!_entries.TryGetValue(hash, out var e) || e.Refs > 0) return false;
        Remove(e);
        return true;
    }

    private void Remove(Entry e)
    {
        foreach (var (k, v) in e.Layers.Values) { k.Dispose(); v.Dispose(); }
        Bytes -= e.Bytes;
        _lru.Remove(e.Node!);
        _entries.Remove(e.Hash);
        Evictions++;
    }

    private void Touch(Entry e)
    {
        _lru.Remove(e.Node!);
        _lru.AddLast(e.Node!);
    }

    public void Dispose()
    {
        foreach (var e in _entries.Values)
            foreach (var (k, v) in e.Layers.Values) { k.Dispose(); v.Dispose(); }
        _entries.Clear();
        _lru.Clear();
        Bytes = 0;
    }
}
