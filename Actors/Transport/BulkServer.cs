using System.Buffers.Binary;
using System.IO.Hashing;
using System.Net.Sockets;
using Akka.Event;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Checkpoints;
using ShardPipe.Actors.Security;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Transport;

/// <summary>
/// A shard reader's bulk listener: holds the offers it made (one-time tokens, expiring), serves each accepted
/// connection on its own thread with pread → XXH3 → send and a bounded window of unacknowledged chunks.
/// </summary>
public sealed class BulkServer : SideChannelListener<BulkServer.Pending>
{
    public sealed record Pending(string What, SafeTensorsFile Shard, TensorInfo Info);

    private readonly int _chunkBytes, _window;

    public int ChunkBytes => _chunkBytes;
    public int Window => _window;

    public BulkServer(string bindHost, string advertisedHost, int port, int chunkBytes, int window, ClusterTls? tls, ILoggingAdapter log, Settings.SideChannelLimits? limits = null)
        : base("bulk channel", BulkChannel.Magic, bindHost, advertisedHost, port, tls, log, BulkChannel.SocketBuffer, limits)
    {
        _chunkBytes = chunkBytes;
        _window = window;
    }

    /// <summary>Registers a transfer and returns its one-time token (valid for <paramref name="validFor"/>).</summary>
    public byte[] Offer(string what, SafeTensorsFile shard, TensorInfo info, TimeSpan validFor) => NewToken(new Pending(what, shard, info), validFor);

    protected override void Serve(Socket s, Stream stream, Pending p)
    {
        try
        {
            s.SendBufferSize = BulkChannel.SocketBuffer;
            Send(s, stream, p);
        }
        catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException)
        {
            Log.Warning("bulk channel: sending {0} broke off: {1}", p.What, ex.Message);
        }
    }

    /// <summary>
    /// Each chunk: its header, then its bytes piece by piece (pread into a small buffer, checksum, send — the bytes
    /// stay in cache between the three), then the XXH3-64 trailer. Acknowledgements are read on this same thread:
    /// drained when they are there, waited for when the window is full.
    /// </summary>
    private void Send(Socket socket, Stream s, Pending p)
    {
        // Over the plain socket, acknowledgements already there are drained without blocking; under TLS the socket's
        // byte count says nothing about whole records, so acknowledgements are read only when the window is full.
        bool plain = s is NetworkStream;
        long total = p.Info.ByteLength;
        var buffer = GC.AllocateUninitializedArray<byte>(BulkChannel.HeaderBytes + BulkChannel.PieceBytes, pinned: true);
        var trailer = new byte[BulkChannel.TrailerBytes];
        var ack = new byte[4];
        var hash = new XxHash3();
        uint sent = 0, acked = 0;
        void WriteHeader(uint length)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(buffer, sent);
            BinaryPrimitives.WriteUInt32LittleEndian(buffer.AsSpan(4), length);
        }
        void TakeAck()
        {
            SideChannel.ReadExactly(s, ack);
            uint seq = BinaryPrimitives.ReadUInt32LittleEndian(ack);
            if (seq != acked) throw new IOException($"acknowledgement {seq} out of order (expected {acked})");
            acked++;
        }
        long offset = 0;
        while (offset < total)
        {
            if (plain) while (socket.Available >= 4) TakeAck();
            while (sent - acked >= _window)
            {
                if (Stopping.IsCancellationRequested) throw new IOException("the node is stopping");
                TakeAck(); // blocks up to the socket's receive timeout
            }
            int n = (int)Math.Min(_chunkBytes, total - offset);
            hash.Reset();
            for (int at = 0; at < n; at += BulkChannel.PieceBytes)
            {
                int m = Math.Min(BulkChannel.PieceBytes, n - at);
                int headerBytes = at == 0 ? BulkChannel.HeaderBytes : 0; // the header rides with the first piece
                var piece = buffer.AsSpan(BulkChannel.HeaderBytes, m);
                try
                {
                    p.Shard.ReadRange(p.Info, offset + at, piece);
                }
                catch (Exception ex) when (ex is IOException or ShardPipeException)
                {
                    if (at == 0) // the receiver expects a header next: tell it why instead
                    {
                        WriteHeader(BulkChannel.ErrorFrame);
                        s.Write(buffer.AsSpan(0, BulkChannel.HeaderBytes));
                        s.Write(SideChannel.ErrorText(ex.Message));
                        s.Flush();
                    }
                    throw new IOException(ex.Message, ex);
                }
                hash.Append(piece);
                if (headerBytes > 0) WriteHeader((uint)n);
                s.Write(buffer.AsSpan(BulkChannel.HeaderBytes - headerBytes, headerBytes + m));
            }
            BinaryPrimitives.WriteUInt64LittleEndian(trailer, hash.GetCurrentHashAsUInt64());
            s.Write(trailer);
            s.Flush();
            offset += n;
            sent++;
        }
        while (acked < sent) TakeAck();
    }

}
