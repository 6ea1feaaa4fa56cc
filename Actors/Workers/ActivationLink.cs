using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.IO.Hashing;
using System.Net.Sockets;
using System.Text;
using Akka.Actor;
using Akka.Event;
using ShardPipe.Actors.Hosting;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// Activation links: a direct socket from a device worker to a worker on another node, for the
/// <see cref="StageInput"/>s it sends there (hidden states to the next stage; the sampled token back to the
/// first). Akka.Remote hands a message through several threads on each side (≈0.6 ms a hop on this machine
/// type); over a link the sending worker writes the frame itself and the reader thread on the far node runs the
/// step (<see cref="StageExecutor"/>): ≈0.2 ms. Actor messages negotiate a link (<see cref="OpenLink"/> → <see cref="LinkOffer"/>
/// with a one-time token) and stay the fallback whenever it is off, not yet up, or broken.
/// <para>On the socket (little-endian): the <see cref="SideChannel"/> opening (magic <c>"SPA1"</c>), then frames,
/// one way: <c>length u32 | manifest length u8 | manifest (ASCII) | body (the MessagePack message) | xxh3 u64 of
/// the body</c>. Only <c>stage</c> frames are accepted; anything else, a bad checksum or an oversized frame closes
/// the link with a logged <see cref="ProtocolException"/>.</para>
/// </summary>
public static class ActivationLink
{
    public static readonly byte[] Magic = "SPA1"u8.ToArray();
    public const string Manifest = "stage";
    public const int HeaderBytes = 5;
    public const int TrailerBytes = 8;

    /// <summary>Writes one frame in a single gathered send (header, body, checksum).</summary>
    public static void WriteFrame(Socket s, string manifest, byte[] body)
    {
        var m = Encoding.ASCII.GetBytes(manifest);
        var header = new byte[HeaderBytes + m.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)body.Length);
        header[4] = (byte)m.Length;
        m.CopyTo(header, HeaderBytes);
        var trailer = new byte[TrailerBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(trailer, XxHash3.HashToUInt64(body));
        int total = header.Length + body.Length + trailer.Length;
        int sent = s.Send(new List<ArraySegment<byte>> { header, body, trailer });
        if (sent != total) throw new SocketException((int)SocketError.MessageSize);
    }

    /// <summary>Reads frames from one link, buffered (a decode step's frame arrives in one receive).</summary>
    public sealed class FrameReader
    {
        private readonly Socket _s;
        private readonly int _maxFrame;
        private readonly byte[] _buffer = new byte[64 << 10];
        private int _start, _end;

        public FrameReader(Socket s, int maxFrame)
        {
            _s = s;
            _maxFrame = maxFrame;
        }

        /// <summary>The next frame's manifest and body; null when the peer closed the link between frames.</summary>
        public (string Manifest, byte[] Body)? Next()
        {
            if (!Ensure(HeaderBytes, atFrameStart: true)) return null;
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(_buffer.AsSpan(_start));
            int manifestLength = _buffer[_start + 4];
            _start += HeaderBytes;
            Ensure(manifestLength);
            string manifest = Encoding.ASCII.GetString(_buffer, _start, manifestLength);
            _start += manifestLength;
            if (length > _maxFrame) throw new ProtocolException($"activation link: a '{manifest}' frame of {length} bytes exceeds the link's maximum of {_maxFrame}");
            if (manifest != Manifest) throw new ProtocolException($"activation link: frame with manifest '{manifest}' (a link carries only '{Manifest}')");
            var body = GC.AllocateUninitializedArray<byte>((int)length);
            Take(body);
            Span<byte> trailer = stackalloc byte[TrailerBytes];
            Take(trailer);
            if (XxHash3.HashToUInt64(body) != BinaryPrimitives.ReadUInt64LittleEndian(trailer))
                throw new ProtocolException($"activation link: a '{manifest}' frame of {length} bytes failed its XXH3 checksum");
            return (manifest, body);
        }

        private bool Ensure(int n, bool atFrameStart = false)
        {
            if (_end - _start >= n) return true;
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
            while (_end < n)
            {
                int got = _s.Receive(_buffer.AsSpan(_end));
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
                int got = _s.Receive(into);
                if (got == 0) throw new EndOfStreamException("the link closed in the middle of a frame");
                into = into[got..];
            }
        }
    }
}

/// <summary>
/// A node's activation-link listener: holds the offers its workers made (one-time tokens naming the worker and
/// the peer), and reads each accepted link on its own thread, handing every frame to its worker's
/// <see cref="StageExecutor.Deliver"/> (which runs the step on that thread).
/// </summary>
public sealed class ActivationListener : SideChannelListener<ActivationListener.Pending>
{
    public sealed record Pending(IActorRef Target, IActorRef From, Action<object, IActorRef> Deliver);

    private readonly ConcurrentDictionary<Socket, byte> _open = new();
    private static long _framesReceived;

    public int MaxFrameBytes { get; }

    /// <summary>Frames this process has received over activation links (diagnostics, tests).</summary>
    public static long FramesReceived => Interlocked.Read(ref _framesReceived);

    public ActivationListener(ActivationLinkSettings settings, ILoggingAdapter log)
        : base("activation link", ActivationLink.Magic, settings.BindHost, settings.AdvertisedHost, settings.Port, log)
    {
        MaxFrameBytes = settings.MaxFrameBytes;
    }

    /// <summary>
    /// A one-time token (valid 30 s) for a link from <paramref name="from"/> to the local worker
    /// <paramref name="target"/>; each frame is handed to <paramref name="deliver"/> on the link's reader thread.
    /// </summary>
    public byte[] Offer(IActorRef target, IActorRef from, Action<object, IActorRef> deliver) =>
        NewToken(new Pending(target, from, deliver), TimeSpan.FromSeconds(30));

    protected override void Serve(Socket s, Pending p)
    {
        string who = $"activation link {p.From.Path} → {p.Target.Path.Name}";
        _open[s] = 0;
        try
        {
            s.ReceiveTimeout = 0; // a link idles between requests
            var reader = new ActivationLink.FrameReader(s, MaxFrameBytes);
            while (reader.Next() is var (manifest, body))
            {
                var message = MessageCodec.Decode(body, manifest);
                Interlocked.Increment(ref _framesReceived);
                p.Deliver(message, p.From);
            }
        }
        catch (ProtocolException ex)
        {
            Log.Warning("{0}: {1}; link closed (its sender falls back to actor messages)", who, ex.Message);
        }
        catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException)
        {
            if (!Stopping.IsCancellationRequested) Log.Info("{0} closed: {1}", who, ex.Message);
        }
        finally
        {
            _open.TryRemove(s, out _);
        }
    }

    public override void Dispose()
    {
        base.Dispose();
        foreach (var s in _open.Keys)
        {
            try { s.Shutdown(SocketShutdown.Both); } catch (Exception ex) when (ex is SocketException or ObjectDisposedException) { }
            s.Dispose();
        }
    }
}

/// <summary>
/// One worker's outgoing activation links, by target path; not thread-safe (its <see cref="StageExecutor"/> calls it
/// under the stage's lock). A link is asked for once per slice; until it is up, and for good once it fails, sends
/// go as actor messages.
/// </summary>
public sealed class ActivationLinks
{
    /// <summary>A link's socket is open (piped back to the worker from the connecting task).</summary>
    public sealed record Connected(string Target, Socket Socket, int MaxFrameBytes);
    public sealed record ConnectFailed(string Target, string Reason);

    private sealed class Link
    {
        public Socket? Socket;
        public int MaxFrameBytes;
        public bool Failed;
    }

    private readonly Dictionary<string, Link> _links = new(StringComparer.Ordinal);
    private readonly ActivationLinkSettings _settings;
    private readonly ILoggingAdapter _log;
    private readonly string _stage;
    private static long _framesSent;

    public ActivationLinks(ActivationLinkSettings settings, ILoggingAdapter log, string stage)
    {
        _settings = settings;
        _log = log;
        _stage = stage;
    }

    /// <summary>Frames this process has sent over activation links (diagnostics, tests).</summary>
    public static long FramesSent => Interlocked.Read(ref _framesSent);

    /// <summary>Asks <paramref name="target"/> for a link unless one was asked for already.</summary>
    public void Want(string target, IActorRef targetRef, IActorRef self)
    {
        if (!_settings.Enabled || _links.ContainsKey(target)) return;
        _links[target] = new Link();
        targetRef.Tell(new OpenLink(target), self);
    }

    /// <summary>Connects to an offered link off the worker's thread; the outcome comes back as <see cref="Connected"/> or <see cref="ConnectFailed"/>.</summary>
    public void Offered(LinkOffer offer, IActorRef self)
    {
        if (!_links.TryGetValue(offer.Target, out var link) || link.Socket is not null || link.Failed) return; // not asked for (or stale)
        if (offer.Refused is { } why)
        {
            Fail(offer.Target, link, why);
            return;
        }
        var timeout = _settings.SendTimeout;
        string what = $"activation link to {offer.Target}";
        Task.Run(() => Connect(offer, timeout, what)).PipeTo(self,
            success: s => new Connected(offer.Target, s, offer.MaxFrameBytes),
            failure: ex => new ConnectFailed(offer.Target, ex.GetBaseException().Message));
    }

    private static Socket Connect(LinkOffer offer, TimeSpan timeout, string what)
    {
        var s = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            using var cts = new CancellationTokenSource(timeout);
            s.ConnectAsync(offer.Host, offer.Port, cts.Token).AsTask().GetAwaiter().GetResult();
            s.ReceiveTimeout = s.SendTimeout = (int)timeout.TotalMilliseconds;
            SideChannel.Open(s, ActivationLink.Magic, offer.Token, what);
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    public void Up(Connected c)
    {
        if (_links.TryGetValue(c.Target, out var link) && link.Socket is null && !link.Failed)
        {
            link.Socket = c.Socket;
            link.MaxFrameBytes = c.MaxFrameBytes;
            _log.Info("{0}: activation link to {1} is up", _stage, c.Target);
        }
        else c.Socket.Dispose(); // the slice changed meanwhile
    }

    public void Down(ConnectFailed f)
    {
        if (_links.TryGetValue(f.Target, out var link)) Fail(f.Target, link, f.Reason);
    }

    /// <summary>Sends over the target's link if it is up; false means: send it as actor messages.</summary>
    public bool TrySend(string target, StageInput message)
    {
        if (!_links.TryGetValue(target, out var link) || link.Socket is not { } s) return false;
        var body = MessageCodec.Encode(message);
        if (body.Length > link.MaxFrameBytes) return false;
        // Counted before the write: the far side may run the step (and the request finish) before Send returns here.
        Interlocked.Increment(ref _framesSent);
        try
        {
            ActivationLink.WriteFrame(s, ActivationLink.Manifest, body);
            return true;
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException or IOException)
        {
            Interlocked.Decrement(ref _framesSent);
            Fail(target, link, ex.Message);
            return false;
        }
    }

    private void Fail(string target, Link link, string reason)
    {
        link.Socket?.Dispose();
        link.Socket = null;
        link.Failed = true;
        _log.Warning("{0}: activation link to {1} unavailable ({2}); hops there go as actor messages", _stage, target, reason);
    }

    /// <summary>Closes every link (the slice is released or the worker stops); a new slice asks again.</summary>
    public void CloseAll()
    {
        foreach (var link in _links.Values) link.Socket?.Dispose();
        _links.Clear();
    }
}
