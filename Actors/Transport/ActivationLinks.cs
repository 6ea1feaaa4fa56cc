using System.Net.Sockets;
using Akka.Actor;
using Akka.Event;
using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Security;
using ShardPipe.Actors.Settings;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Transport;

/// <summary>
/// One worker's outgoing activation links, by target path; not thread-safe (its <see cref="StageExecutor"/> calls it
/// under the stage's lock). A link is asked for once per slice; until it is up, and for good once it fails, sends
/// go as actor messages.
/// </summary>
public sealed class ActivationLinks
{
    /// <summary>A link's socket is open (piped back to the worker from the connecting task).</summary>
    public sealed record Connected(string Target, Socket Socket, Stream Stream, int MaxFrameBytes);
    public sealed record ConnectFailed(string Target, string Reason);

    private sealed class Link
    {
        public Socket? Socket;
        public Stream? Stream;
        public int MaxFrameBytes;
        public bool Failed;
    }

    private readonly Dictionary<string, Link> _links = new(StringComparer.Ordinal);
    private readonly ActivationLinkSettings _settings;
    private readonly ILoggingAdapter _log;
    private readonly string _stage;
    private readonly NodeDiagnostics _diagnostics;

    public ActivationLinks(ActivationLinkSettings settings, ILoggingAdapter log, string stage, NodeDiagnostics diagnostics)
    {
        _settings = settings;
        _log = log;
        _stage = stage;
        _diagnostics = diagnostics;
    }

    /// <summary>Asks <paramref name="target"/> for a link unless one was asked for already.</summary>
    public void Want(string target, IActorRef targetRef, IActorRef self)
    {
        if (!_settings.Endpoint.Enabled || _links.ContainsKey(target)) return;
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
        var tls = _settings.Endpoint.Tls;
        string what = $"activation link to {offer.Target}";
        Task.Run(() => Connect(offer, timeout, tls, what)).PipeTo(self,
            success: c => new Connected(offer.Target, c.Socket, c.Stream, offer.MaxFrameBytes),
            failure: ex => new ConnectFailed(offer.Target, ShardPipeException.Describe(ex)));
    }

    private static (Socket Socket, Stream Stream) Connect(LinkOffer offer, TimeSpan timeout, ClusterTls? tls, string what)
    {
        var s = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            using var cts = new CancellationTokenSource(timeout);
            s.ConnectAsync(offer.Host, offer.Port, cts.Token).AsTask().GetAwaiter().GetResult();
            s.ReceiveTimeout = s.SendTimeout = (int)timeout.TotalMilliseconds;
            var stream = ClusterTls.Open(s, tls, offer.Host);
            SideChannel.Open(stream, ActivationLink.Magic, offer.Token, what);
            return (s, stream);
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
            link.Stream = c.Stream;
            link.MaxFrameBytes = c.MaxFrameBytes;
            _diagnostics.LinkUp();
            _log.Info("{0}: activation link to {1} is up", _stage, c.Target);
        }
        else
        {
            c.Stream.Dispose(); // the slice changed meanwhile
            c.Socket.Dispose();
        }
    }

    public void Down(ConnectFailed f)
    {
        if (_links.TryGetValue(f.Target, out var link)) Fail(f.Target, link, f.Reason);
    }

    /// <summary>Sends over the target's link if it is up; false means: send it as actor messages.</summary>
    public bool TrySend(string target, IShardPipeMessage message)
    {
        string manifest = message switch
        {
            StageInput => ActivationLink.Manifest,
            StageBatch => ActivationLink.BatchManifest,
            _ => throw new ArgumentException($"an activation link carries steps, not {message.GetType().Name}"),
        };
        if (!_links.TryGetValue(target, out var link) || link.Stream is not { } s) return false;
        var body = MessageCodec.Encode(message);
        if (body.Length > link.MaxFrameBytes) return false;
        // Counted before the write: the far side may run the step (and the request finish) before Send returns here.
        _diagnostics.FrameSent();
        try
        {
            ActivationLink.WriteFrame(s, manifest, body);
            return true;
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException or IOException)
        {
            _diagnostics.FrameNotSent();
            Fail(target, link, ex.Message);
            return false;
        }
    }

    private static void Close(Link link)
    {
        try { link.Stream?.Dispose(); } catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException) { }
        link.Socket?.Dispose();
        link.Stream = null;
        link.Socket = null;
    }

    private void Fail(string target, Link link, string reason)
    {
        Close(link);
        link.Failed = true;
        _log.Warning("{0}: activation link to {1} unavailable ({2}); hops there go as actor messages", _stage, target, reason);
    }

    /// <summary>Closes every link (the slice is released or the worker stops); a new slice asks again.</summary>
    public void CloseAll()
    {
        foreach (var link in _links.Values) Close(link);
        _links.Clear();
    }
}
