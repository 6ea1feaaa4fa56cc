using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Hashing;
using System.Net.Sockets;
using System.Text;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Transport;

/// <summary>
/// Activation links: a direct socket from a device worker to a worker on another node, for the
/// <see cref="StageInput"/>s (or <see cref="StageBatch"/>es of merged steps) it sends there (hidden states to the next stage; the sampled token back to the
/// first). Akka.Remote hands a message through several threads on each side (≈0.6 ms a hop on this machine
/// type); over a link the sending worker writes the frame itself and the reader thread on the far node queues the
/// step for its stage's compute thread (<see cref="StageExecutor"/>): ≈0.1–0.2 ms. Actor messages negotiate a link (<see cref="OpenLink"/> → <see cref="LinkOffer"/>
/// with a one-time token) and stay the fallback whenever it is off, not yet up, or broken.
/// <para>On the socket (little-endian): the <see cref="SideChannel"/> opening (magic <c>"SPA1"</c>), then frames,
/// one way: <c>length u32 | sent-at i64 (the sender's monotonic clock, for hop timing) | manifest length u8 | manifest (ASCII) | body (the MessagePack message) | xxh3 u64 of
/// the body</c>. Only <c>stage</c> and <c>stages</c> frames are accepted; anything else, a bad checksum or an oversized frame closes
/// the link with a logged <see cref="ProtocolException"/>.</para>
/// </summary>
public static class ActivationLink
{
    public static readonly byte[] Magic = "SPA1"u8.ToArray();
    public const string Manifest = "stage";
    /// <summary>The manifest of a <see cref="StageBatch"/> frame: several requests' steps from one merged step.</summary>
    public const string BatchManifest = "stages";
    /// <summary><c>length u32 | sent-at i64 | manifest length u8</c>.</summary>
    public const int HeaderBytes = 13;
    public const int TrailerBytes = 8;

    /// <summary>
    /// Writes one frame: over the plain socket in a single gathered send (header, body, checksum); under TLS as one
    /// write of the frame assembled in a pooled buffer (one record for a decode step's frame).
    /// </summary>
    public static void WriteFrame(Stream s, string manifest, byte[] body)
    {
        var m = Encoding.ASCII.GetBytes(manifest);
        var header = new byte[HeaderBytes + m.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)body.Length);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(4), Stopwatch.GetTimestamp());
        header[12] = (byte)m.Length;
        m.CopyTo(header, HeaderBytes);
        var trailer = new byte[TrailerBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(trailer, XxHash3.HashToUInt64(body));
        int total = header.Length + body.Length + trailer.Length;
        if (s is NetworkStream plain)
        {
            int sent = plain.Socket.Send(new List<ArraySegment<byte>> { header, body, trailer });
            if (sent != total) throw new SocketException((int)SocketError.MessageSize);
            return;
        }
        var frame = System.Buffers.ArrayPool<byte>.Shared.Rent(total);
        try
        {
            header.CopyTo(frame, 0);
            body.CopyTo(frame, header.Length);
            trailer.CopyTo(frame, header.Length + body.Length);
            s.Write(frame, 0, total);
            s.Flush();
        }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(frame); }
    }

    /// <summary>
    /// Reads frames from one link, buffered (a decode step's frame arrives in one receive). A link may idle between
    /// frames, but once a frame's first byte is in, the whole frame must arrive within the frame deadline, and its
    /// body is allocated as its bytes arrive (a header that declares the maximum and then goes silent holds at most
    /// what was sent, until the deadline closes the link).
    /// </summary>
    public sealed class FrameReader
    {
        /// <summary>A body up to this size is allocated at once; a larger one grows (doubling) as it arrives.</summary>
        public const int UpfrontBodyBytes = 1 << 20;
        private readonly Stream _s;
        private readonly int _maxFrame;
        private readonly Socket? _socket;
        private readonly TimeSpan _frameTimeout;
        private readonly byte[] _buffer = new byte[64 << 10];
        private int _start, _end;
        private long _deadline; // Stopwatch ticks; 0 = between frames (no deadline)

        /// <param name="socket">The link's socket, whose receive timeout enforces the frame deadline (null: no deadline).</param>
        /// <param name="frameTimeout">How long one frame may take from its first byte to its last.</param>
        public FrameReader(Stream s, int maxFrame, Socket? socket = null, TimeSpan frameTimeout = default)
        {
            _s = s;
            _maxFrame = maxFrame;
            _socket = socket;
            _frameTimeout = frameTimeout;
        }

        /// <summary>
        /// The next frame's manifest, body and send time (the sender's monotonic clock); null when the peer closed
        /// the link between frames.
        /// </summary>
        public (string Manifest, byte[] Body, long SentAt)? Next()
        {
            _deadline = 0;
            if (!Ensure(HeaderBytes, atFrameStart: true)) return null;
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(_buffer.AsSpan(_start));
            long sentAt = BinaryPrimitives.ReadInt64LittleEndian(_buffer.AsSpan(_start + 4));
            int manifestLength = _buffer[_start + 12];
            _start += HeaderBytes;
            Ensure(manifestLength);
            string manifest = Encoding.ASCII.GetString(_buffer, _start, manifestLength);
            _start += manifestLength;
            if (length > _maxFrame) throw new ProtocolException($"activation link: a '{manifest}' frame of {length} bytes exceeds the link's maximum of {_maxFrame}");
            if (manifest != Manifest && manifest != BatchManifest) throw new ProtocolException($"activation link: frame with manifest '{manifest}' (a link carries only '{Manifest}' and '{BatchManifest}')");
            var body = ReadBody((int)length);
            Span<byte> trailer = stackalloc byte[TrailerBytes];
            Take(trailer);
            if (XxHash3.HashToUInt64(body) != BinaryPrimitives.ReadUInt64LittleEndian(trailer))
                throw new ProtocolException($"activation link: a '{manifest}' frame of {length} bytes failed its XXH3 checksum");
            _deadline = 0;
            if (_socket is not null) _socket.ReceiveTimeout = 0;
            return (manifest, body, sentAt);
        }

        /// <summary>The body, allocated as it arrives: at once up to <see cref="UpfrontBodyBytes"/>, else doubling.</summary>
        private byte[] ReadBody(int length)
        {
            var body = GC.AllocateUninitializedArray<byte>(Math.Min(length, UpfrontBodyBytes));
            int have = 0;
            while (true)
            {
                Take(body.AsSpan(have));
                have = body.Length;
                if (have == length) return body;
                var grown = GC.AllocateUninitializedArray<byte>((int)Math.Min(length, 2L * have));
                body.AsSpan().CopyTo(grown);
                body = grown;
            }
        }

        /// <summary>One read; starts the frame's deadline at its first byte and keeps the socket's timeout to what is left of it.</summary>
        private int Read(Span<byte> into)
        {
            if (_socket is not null && _frameTimeout > TimeSpan.Zero && _deadline != 0)
            {
                var left = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), _deadline);
                if (left <= TimeSpan.Zero) throw new ProtocolException($"activation link: a frame did not arrive within {_frameTimeout.TotalSeconds:0.#} s");
                _socket.ReceiveTimeout = Math.Max(1, (int)Math.Ceiling(left.TotalMilliseconds));
            }
            int got;
            try { got = _s.Read(into); }
            catch (IOException ex) when (ex.InnerException is SocketException { SocketErrorCode: SocketError.TimedOut } && _deadline != 0)
            {
                throw new ProtocolException($"activation link: a frame did not arrive within {_frameTimeout.TotalSeconds:0.#} s");
            }
            if (got > 0 && _deadline == 0) _deadline = Stopwatch.GetTimestamp() + (long)(_frameTimeout.TotalSeconds * Stopwatch.Frequency);
            return got;
        }

        private bool Ensure(int n, bool atFrameStart = false)
        {
            if (_end - _start >= n) return true;
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
            if (_end > 0 && _deadline == 0) _deadline = Stopwatch.GetTimestamp() + (long)(_frameTimeout.TotalSeconds * Stopwatch.Frequency);
            while (_end < n)
            {
                int got = Read(_buffer.AsSpan(_end));
                if (got == 0)
                {
                    if (atFrameStart && _end == 0) return false;
                    throw new EndOfStreamException("the link closed in the middle of a frame");
                }
                _end += got;
            }
            return true;
        }

        private void Take(Span<byte> into)
        {
            int have = Math.Min(into.Length, _end - _start);
            _buffer.AsSpan(_start, have).CopyTo(into);
            _start += have;
            for (into = into[have..]; into.Length > 0;)
            {
                int got = Read(into);
                if (got == 0) throw new EndOfStreamException("the link closed in the middle of a frame");
                into = into[got..];
            }
        }
    }
}
