using System.Net.Sockets;
using System.Net;
using Akka.Event;
using ShardPipe.Actors.Security;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Transport;

/// <summary>
/// A side channel's listener: one-time tokens for the transfers actor messages offered (each with what the
/// connection will need, expiring), an accept loop, and a dedicated thread per accepted connection, which
/// runs the TLS handshake when the cluster has TLS, checks the opening and claims its token before the channel's own protocol (<see cref="Serve"/>) runs.
/// Bounded (<see cref="SideChannelLimits"/>): at most so many connections at once (more are closed on accept), and the
/// whole opening within a deadline, so idle strangers cannot pin threads or sockets.
/// </summary>
public abstract class SideChannelListener<TPending> : IDisposable where TPending : class
{
    private readonly TcpListener _listener;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, (TPending Value, DateTime Expires)> _pending = new();
    private readonly byte[] _magic;
    private readonly string _kind;
    private readonly ClusterTls? _tls;
    private readonly Settings.SideChannelLimits _limits;
    private int _connections;
    private long _refusedAtCap, _lastCapWarning;
    protected readonly CancellationTokenSource Stopping = new();
    protected readonly ILoggingAdapter Log;

    public string Host { get; }

    /// <summary>Connections held now (opening or served).</summary>
    public int Connections => Volatile.Read(ref _connections);

    /// <summary>Connections closed on accept because <see cref="SideChannelLimits.MaxConnections"/> were held.</summary>
    public long RefusedAtCap => Interlocked.Read(ref _refusedAtCap);
    public int Port { get; }

    /// <param name="kind">The channel's name in logs and refusals ("bulk channel", "activation link").</param>
    /// <param name="tls">Mutual TLS on every accepted connection (null = plaintext).</param>
    protected SideChannelListener(string kind, byte[] magic, string bindHost, string advertisedHost, int port, ClusterTls? tls, ILoggingAdapter log, int receiveBuffer = 0, Settings.SideChannelLimits? limits = null)
    {
        _limits = limits ?? Settings.SideChannelLimits.Default;
        _kind = kind;
        _tls = tls;
        _magic = magic;
        Log = log;
        try
        {
            _listener = new TcpListener(SideChannel.BindAddress(bindHost), port);
            if (receiveBuffer > 0) _listener.Server.ReceiveBufferSize = receiveBuffer;
            _listener.Start();
        }
        catch (SocketException ex)
        {
            throw new ClusterException($"{kind}: cannot listen on {bindHost}:{port}: {ex.Message}");
        }
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        Host = advertisedHost;
        _ = Task.Run(AcceptLoop);
    }

    /// <summary>Registers what a connection presenting the returned one-time token gets (valid for <paramref name="validFor"/>).</summary>
    protected byte[] NewToken(TPending value, TimeSpan validFor)
    {
        foreach (var (k, p) in _pending)
            if (p.Expires < DateTime.UtcNow) _pending.TryRemove(k, out _);
        var token = System.Security.Cryptography.RandomNumberGenerator.GetBytes(16);
        _pending[Convert.ToHexString(token)] = (value, DateTime.UtcNow + validFor);
        return token;
    }

    private async Task AcceptLoop()
    {
        while (!Stopping.IsCancellationRequested)
        {
            Socket s;
            try { s = await _listener.AcceptSocketAsync(Stopping.Token); }
            catch (Exception) when (Stopping.IsCancellationRequested) { return; }
            catch (SocketException ex)
            {
                Log.Warning("{0}: accept failed: {1}", _kind, ex.Message);
                continue;
            }
            // Only this loop adds connections (others only end them), so the count never passes the cap, even for a moment.
            if (Volatile.Read(ref _connections) >= _limits.MaxConnections)
            {
                Interlocked.Increment(ref _refusedAtCap);
                s.Dispose();
                long now = Environment.TickCount64;
                if (now - Interlocked.Read(ref _lastCapWarning) > 10_000)
                {
                    Interlocked.Exchange(ref _lastCapWarning, now);
                    Log.Warning("{0}: {1} connections held (max-connections); closing new ones ({2} so far)", _kind, _limits.MaxConnections, RefusedAtCap);
                }
                continue;
            }
            Interlocked.Increment(ref _connections);
            new Thread(() => { try { Open(s); } finally { Interlocked.Decrement(ref _connections); } }) { IsBackground = true, Name = _kind }.Start();
        }
    }

    private void Open(Socket s)
    {
        bool timedOut = false;
        try
        {
            using var _ = s;
            s.NoDelay = true;
            int openingMs = (int)Math.Ceiling(_limits.OpeningTimeout.TotalMilliseconds);
            s.ReceiveTimeout = s.SendTimeout = openingMs;
            // The opening's deadline: the socket is closed under a peer that has not shown a token in time.
            int settled = 0;
            var deadline = new Timer(_ => { if (Interlocked.Exchange(ref settled, 1) == 0) { timedOut = true; s.Dispose(); } }, null, openingMs, Timeout.Infinite);
            Stream stream;
            TPending value;
            try
            {
                stream = ClusterTls.Accept(s, _tls);
                if (SideChannel.AcceptHello(stream, _magic, _kind) is not { } token) { stream.Dispose(); return; }
                if (!_pending.TryRemove(token, out var p) || p.Expires < DateTime.UtcNow)
                {
                    SideChannel.Refuse(stream, "unknown or expired token");
                    stream.Dispose();
                    return;
                }
                value = p.Value;
            }
            finally { deadline.Dispose(); }
            if (Interlocked.Exchange(ref settled, 1) != 0) return; // the deadline closed it as the opening ended
            using var _stream = stream;
            s.ReceiveTimeout = s.SendTimeout = 30_000;
            SideChannel.Accept(stream);
            Serve(s, stream, value);
        }
        catch (TlsRefusedException ex)
        {
            Log.Warning("{0}: refused a connection: {1}", _kind, ex.Message);
        }
        catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException)
        {
            if (Volatile.Read(ref timedOut)) Log.Debug("{0}: closed a connection that did not open within {1}", _kind, _limits.OpeningTimeout);
            else if (!Stopping.IsCancellationRequested) Log.Warning("{0}: a connection broke off: {1}", _kind, ex.Message);
        }
        catch (Exception ex)
        {
            // This is a plain thread: an exception escaping it would end the node's process.
            Log.Error(ex, "{0}: a connection failed unexpectedly and was closed: {1}", _kind, ex.Message);
        }
    }

    /// <summary>
    /// The channel's protocol on an accepted, authenticated connection (on its own thread; both are disposed after):
    /// <paramref name="stream"/> carries the bytes (TLS or the plain socket), <paramref name="s"/> is for socket options.
    /// </summary>
    protected abstract void Serve(Socket s, Stream stream, TPending pending);

    public virtual void Dispose()
    {
        Stopping.Cancel();
        _listener.Stop();
        _pending.Clear();
    }
}
