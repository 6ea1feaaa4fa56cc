using System.IO.Hashing;

namespace ShardPipe.Messages;

/// <summary>Splits an encoded message into <see cref="MessageChunk"/>s when it exceeds <see cref="Protocol.MaxChunkBytes"/>.</summary>
public static class Chunking
{
    /// <summary>The message itself when small, else its chunks in order.</summary>
    public static IEnumerable<object> Split(object message)
    {
        byte[] bytes = MessageCodec.Encode(message);
        if (bytes.Length <= Protocol.MaxChunkBytes)
        {
            yield return message;
            yield break;
        }
        string id = Guid.NewGuid().ToString("N");
        string manifest = MessageCodec.Manifest(message);
        int count = (bytes.Length + Protocol.MaxChunkBytes - 1) / Protocol.MaxChunkBytes;
        for (int i = 0; i < count; i++)
        {
            var data = bytes.AsMemory(i * Protocol.MaxChunkBytes, Math.Min(Protocol.MaxChunkBytes, bytes.Length - i * Protocol.MaxChunkBytes)); // a view: copied once, into its frame
            yield return new MessageChunk(id, i, count, manifest, Crc32.HashToUInt32(data.Span), data);
        }
    }
}

/// <summary>
/// Reassembles chunked messages on the receiving side (one per actor; not thread-safe). Every number a chunk carries
/// is checked before anything is allocated for it: the chunk count against the largest message accepted, the
/// sequence, the chunk's size, a count that stays the same across a transfer, and the bytes held for unfinished
/// transfers against a cap — a hostile or broken sender gets a <see cref="ProtocolException"/>, never an allocation.
/// </summary>
public sealed class ChunkAssembler
{
    private sealed class Transfer
    {
        public required int Count;
        public required DateTime Started;
        public readonly List<ReadOnlyMemory<byte>> Parts = new();
        public long Bytes;
    }

    private readonly Dictionary<string, Transfer> _open = new();
    private readonly long _maxMessageBytes, _maxOpenBytes;
    private long _openBytes;

    /// <param name="maxMessageBytes">The largest reassembled message accepted (default 1 GiB).</param>
    /// <param name="maxOpenBytes">Bytes held at once for unfinished transfers (default 2 GiB).</param>
    public ChunkAssembler(long maxMessageBytes = 1L << 30, long maxOpenBytes = 2L << 30)
    {
        _maxMessageBytes = maxMessageBytes;
        _maxOpenBytes = maxOpenBytes;
    }

    private int MaxChunks => (int)Math.Min(int.MaxValue, (_maxMessageBytes + Protocol.MaxChunkBytes - 1) / Protocol.MaxChunkBytes);

    /// <summary>Adds a chunk; returns the decoded message once the last chunk is in, else null.</summary>
    public object? Add(MessageChunk c)
    {
        string what = $"chunk {c.Sequence} of {c.TransferId} ('{c.Manifest}')";
        if (c.Count < 1 || c.Count > MaxChunks) Fail(c, $"{what} claims {c.Count} chunks (1..{MaxChunks} accepted: messages up to {_maxMessageBytes} bytes)");
        if (c.Sequence < 0 || c.Sequence >= c.Count) Fail(c, $"{what}: sequence outside 0..{c.Count - 1}");
        if (c.Data.Length > Protocol.MaxChunkBytes) Fail(c, $"{what} carries {c.Data.Length} bytes (at most {Protocol.MaxChunkBytes})");
        if (Crc32.HashToUInt32(c.Data.Span) != c.Crc32) Fail(c, $"{what} failed its CRC-32 check");
        if (!_open.TryGetValue(c.TransferId, out var entry))
        {
            if (c.Sequence != 0) throw new ProtocolException($"{what} arrived without its first chunk");
            entry = new Transfer { Count = c.Count, Started = DateTime.UtcNow };
            _open[c.TransferId] = entry;
        }
        if (c.Count != entry.Count) Fail(c, $"{what} claims {c.Count} chunks, its transfer began with {entry.Count}");
        if (c.Sequence != entry.Parts.Count) Fail(c, $"{what} out of order (expected {entry.Parts.Count} of {c.Count})");
        if (_openBytes + c.Data.Length > _maxOpenBytes) Fail(c, $"{what}: unfinished transfers would hold more than {_maxOpenBytes} bytes");
        entry.Parts.Add(c.Data);
        entry.Bytes += c.Data.Length;
        _openBytes += c.Data.Length;
        if (entry.Parts.Count < entry.Count) return null;
        Forget(c.TransferId);
        var whole = GC.AllocateUninitializedArray<byte>(entry.Parts.Sum(p => p.Length));
        int at = 0;
        foreach (var p in entry.Parts)
        {
            p.Span.CopyTo(whole.AsSpan(at));
            at += p.Length;
        }
        return MessageCodec.Decode(whole, c.Manifest);
    }

    /// <summary>Drops transfers older than <paramref name="age"/> (their sender died mid-way).</summary>
    public int DropStale(TimeSpan age)
    {
        var stale = _open.Where(kv => DateTime.UtcNow - kv.Value.Started > age).Select(kv => kv.Key).ToList();
        foreach (var k in stale) Forget(k);
        return stale.Count;
    }

    private void Forget(string transferId)
    {
        if (_open.Remove(transferId, out var t)) _openBytes -= t.Bytes;
    }

    private void Fail(MessageChunk c, string message)
    {
        Forget(c.TransferId);
        throw new ProtocolException(message);
    }
}
