using System.IO.Hashing;
using ShardPipe.Checkpoints;

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

/// <summary>Reassembles chunked messages on the receiving side (one per actor; not thread-safe).</summary>
public sealed class ChunkAssembler
{
    private readonly Dictionary<string, (List<ReadOnlyMemory<byte>> Parts, DateTime Started)> _open = new();

    /// <summary>Adds a chunk; returns the decoded message once the last chunk is in, else null.</summary>
    public object? Add(MessageChunk c)
    {
        if (Crc32.HashToUInt32(c.Data.Span) != c.Crc32)
        {
            _open.Remove(c.TransferId);
            throw new ProtocolException($"chunk {c.Sequence} of {c.TransferId} ('{c.Manifest}') failed its CRC-32 check");
        }
        if (!_open.TryGetValue(c.TransferId, out var entry))
        {
            if (c.Sequence != 0) throw new ProtocolException($"chunk {c.Sequence} of {c.TransferId} arrived without its first chunk");
            entry = (new List<ReadOnlyMemory<byte>>(c.Count), DateTime.UtcNow);
            _open[c.TransferId] = entry;
        }
        if (c.Sequence != entry.Parts.Count || c.Count <= 0 || c.Sequence >= c.Count)
        {
            _open.Remove(c.TransferId);
            throw new ProtocolException($"chunk {c.Sequence} of {c.TransferId} out of order (expected {entry.Parts.Count} of {c.Count})");
        }
        entry.Parts.Add(c.Data);
        if (entry.Parts.Count < c.Count) return null;
        _open.Remove(c.TransferId);
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
        foreach (var k in stale) _open.Remove(k);
        return stale.Count;
    }
}
