using System.Buffers.Binary;
using System.IO.Hashing;
using System.Net.Sockets;
using ShardPipe.Actors.Security;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Transport;

/// <summary>
/// The socket side channel for bulk weights (Akka.Remote carries bytes at a fraction of a raw socket's speed).
/// Actor messages negotiate it: a worker's bulk <see cref="ReadTensor"/> gets a <see cref="BulkOffer"/> naming this
/// node's listener and a one-time token; the worker connects and reads the tensor straight into its storage.
/// <para>On the socket (little-endian): the opening of every <see cref="SideChannel"/> (magic <c>"SPB1"</c>); then chunks <c>seq u32 | length u32 |
/// bytes | xxh3 u64</c> (XXH3-64 of the chunk's bytes; it trails, so both ends compute it piece by piece while
/// the bytes are in cache), each acknowledged by the client with its <c>seq u32</c>. XXH3 rather than CRC-32:
/// both detect corruption that TCP's own checksum lets through, and XXH3 costs a third as much CPU — on two cores
/// the transfer is CPU-bound. The server keeps at most the
/// offer's window of frames unacknowledged. A frame length of <see cref="ErrorFrame"/> carries an error text
/// instead of bytes.</para>
/// </summary>
public static class BulkChannel
{
    public static readonly byte[] Magic = "SPB1"u8.ToArray();
    public const uint ErrorFrame = uint.MaxValue;
    public const int HeaderBytes = 8;
    /// <summary>Checksums and socket calls go piece by piece within a chunk, so the bytes are checked while in cache.</summary>
    public const int PieceBytes = 512 << 10;
    public const int SocketBuffer = 4 << 20;
    public const int TrailerBytes = 8;

    /// <summary>
    /// Receives an offered tensor into <paramref name="destination"/> (its exact size), checking order, bounds and
    /// every chunk's XXH3-64. Connection failures raise <see cref="BulkUnreachableException"/> (the caller may fall
    /// back to actor messages); anything after that is a <see cref="ClusterException"/> naming the tensor. With
    /// <paramref name="tls"/> the connection is mutual TLS (a failed handshake counts as unreachable).
    /// </summary>
    public static void Receive(BulkOffer offer, Span<byte> destination, TimeSpan timeout, string what, ClusterTls? tls = null)
    {
        if (destination.Length != offer.TotalBytes)
            throw new ProtocolException($"bulk offer for {what} carries {offer.TotalBytes} bytes, expected {destination.Length}");
        using var s = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveBufferSize = SocketBuffer };
        try
        {
            using var cts = new CancellationTokenSource(timeout > TimeSpan.FromSeconds(5) ? timeout : TimeSpan.FromSeconds(5)); // a busy machine may be slow to connect
            s.ConnectAsync(offer.Host, offer.Port, cts.Token).AsTask().GetAwaiter().GetResult();
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException)
        {
            throw new BulkUnreachableException($"bulk channel {offer.Host}:{offer.Port} for {what} unreachable: {ex.Message}");
        }
        s.ReceiveTimeout = s.SendTimeout = (int)Math.Min(int.MaxValue, timeout.TotalMilliseconds);
        string where = $"{what} from {offer.Host}:{offer.Port}";
        Stream stream;
        try { stream = ClusterTls.Open(s, tls, offer.Host); }
        catch (TlsRefusedException ex) { throw new BulkUnreachableException($"bulk channel {offer.Host}:{offer.Port} for {what}: {ex.Message}"); }
        using var _ = stream;
        try { SideChannel.Open(stream, Magic, offer.Token, $"bulk transfer of {where}"); }
        catch (Exception ex) when (ex is SocketException or EndOfStreamException or IOException)
        {
            throw new ClusterException($"bulk transfer of {where} broke off: {ex.Message}");
        }
        ReceiveChunks(stream, offer, destination, where);
    }

    /// <summary>
    /// The chunks of one transfer, after the opening: each checked for order, bounds and its XXH3-64 before the next,
    /// written straight into <paramref name="destination"/> and acknowledged. Every fault is a <see cref="ClusterException"/>
    /// naming <paramref name="where"/>.
    /// </summary>
    public static void ReceiveChunks(Stream stream, BulkOffer offer, Span<byte> destination, string where)
    {
        try
        {
            Span<byte> header = stackalloc byte[HeaderBytes];
            Span<byte> trailer = stackalloc byte[TrailerBytes];
            Span<byte> ack = stackalloc byte[4];
            var hash = new XxHash3();
            long offset = 0;
            uint seq = 0;
            while (offset < destination.Length)
            {
                SideChannel.ReadExactly(stream, header);
                uint got = BinaryPrimitives.ReadUInt32LittleEndian(header), length = BinaryPrimitives.ReadUInt32LittleEndian(header[4..]);
                if (length == ErrorFrame) throw new ClusterException($"bulk transfer of {where} failed at the sender: {SideChannel.ReadErrorText(stream)}");
                if (got != seq || length == 0 || length > offer.ChunkBytes || offset + length > destination.Length)
                    throw new ClusterException($"bulk transfer of {where}: chunk {got} ({length} bytes at {offset}) out of order or out of bounds (expected chunk {seq})");
                // Checksummed piece by piece as it lands, while the bytes are still in cache.
                var chunk = destination.Slice((int)offset, (int)length);
                hash.Reset();
                for (int at = 0; at < chunk.Length; at += PieceBytes)
                {
                    var piece = chunk.Slice(at, Math.Min(PieceBytes, chunk.Length - at));
                    SideChannel.ReadExactly(stream, piece);
                    hash.Append(piece);
                }
                SideChannel.ReadExactly(stream, trailer);
                if (hash.GetCurrentHashAsUInt64() != BinaryPrimitives.ReadUInt64LittleEndian(trailer))
                    throw new ClusterException($"bulk transfer of {where}: chunk {seq} failed its XXH3 checksum");
                BinaryPrimitives.WriteUInt32LittleEndian(ack, seq);
                stream.Write(ack);
                offset += length;
                seq++;
            }
        }
        catch (Exception ex) when (ex is SocketException or EndOfStreamException or IOException)
        {
            throw new ClusterException($"bulk transfer of {where} broke off: {ex.Message}");
        }
    }
}

/// <summary>The bulk channel could not be reached at all; nothing was transferred (fall back to actor messages).</summary>
public sealed class BulkUnreachableException : ShardPipeException
{
    public BulkUnreachableException(string message) : base(message) { }
}
