using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using Akka.Actor;
using Akka.Event;
using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Settings;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Transport;

/// <summary>
/// A node's activation-link listener: holds the offers its workers made (one-time tokens naming the worker and
/// the peer), and reads each accepted link on its own thread, handing every frame to its worker's
/// <see cref="StageExecutor.Deliver"/> (which queues the step for the stage's compute thread).
/// </summary>
public sealed class ActivationListener : SideChannelListener<ActivationListener.Pending>
{
    public sealed record Pending(IActorRef Target, IActorRef From, Action<object, IActorRef> Deliver);

    private readonly ConcurrentDictionary<Socket, byte> _open = new();
    private readonly NodeDiagnostics _diagnostics;

    public int MaxFrameBytes { get; }
    private readonly TimeSpan _frameTimeout;

    public ActivationListener(ActivationLinkSettings settings, ILoggingAdapter log, NodeDiagnostics diagnostics)
        : base("activation link", ActivationLink.Magic, settings.Endpoint.BindHost, settings.Endpoint.AdvertisedHost, settings.Endpoint.Port, settings.Endpoint.Tls, log, limits: settings.Limits)
    {
        MaxFrameBytes = settings.MaxFrameBytes;
        _frameTimeout = settings.FrameTimeout;
        _diagnostics = diagnostics;
        diagnostics.LinkListenerPort = Port;
        _offerTimeout = settings.OfferTimeout;
    }

    private readonly TimeSpan _offerTimeout;

    /// <summary>
    /// A one-time token (valid <c>offer-timeout</c>) for a link from <paramref name="from"/> to the local worker
    /// <paramref name="target"/>; each frame is handed to <paramref name="deliver"/> on the link's reader thread.
    /// </summary>
    public byte[] Offer(IActorRef target, IActorRef from, Action<object, IActorRef> deliver) =>
        NewToken(new Pending(target, from, deliver), _offerTimeout);

    protected override void Serve(Socket s, Stream stream, Pending p)
    {
        string who = $"activation link {p.From.Path} → {p.Target.Path.Name}";
        _open[s] = 0;
        try
        {
            s.ReceiveTimeout = 0; // a link idles between requests
            var reader = new ActivationLink.FrameReader(stream, MaxFrameBytes, s, _frameTimeout);
            while (reader.Next() is var (manifest, body, sentAt))
            {
                if (Stopwatch.GetElapsedTime(sentAt).TotalMilliseconds is > 0 and var hopMs) _diagnostics.HopLatency.Record(hopMs);
                var message = MessageCodec.Decode(body, manifest);
                _diagnostics.FrameReceived();
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
