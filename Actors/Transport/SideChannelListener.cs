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
/// </summary>
public abstract class SideChannelListener<TPending> : IDisposable where TPending : class
{
    private readonly TcpListener _listener;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, (TPending Value, DateTime Expires)> _pending = new();
    private readonly byte[] _magic;
    private readonly string _kind;
    private readonly ClusterTls? _tls;
    protected readonly CancellationTokenSource Stopping = new();
    protected readonly ILoggingAdapter Log;

    public string Host { get; }
    public int Port { get; }

    /// <param name="kind">The channel's name in logs and refusals ("bulk channel", "activation link").</param>
    /// <param name="tls">Mutual TLS on every accepted connection (null = plaintext).</param>
    protected SideChannelListener(string kind, byte[] magic, string bindHost, string advertisedHost, int port, ClusterTls? tls, ILoggingAdapter log, int receiveBuffer = 0)
    {
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
            new Thread(() => Open(s)) { IsBackground = true, Name = _kind }.Start();
        }
    }

    private void Open(Socket s)
    {
        try
        {
            using var _ = s;
            s.NoDelay = true;
            s.ReceiveTimeout = s.SendTimeout = 30_000;
            using var stream = ClusterTls.Accept(s, _tls);
            if (SideChannel.AcceptHello(stream, _magic, _kind) is not { } token) return;
            if (!_pending.TryRemove(token, out var p) || p.Expires < DateTime.UtcNow)
            {
                SideChannel.Refuse(stream, "unknown or expired token");
                return;
            }
            SideChannel.Accept(stream);
            Serve(s, stream, p.Value);
        }
        catch (TlsRefusedException ex)
        {
            Log.Warning("{0}: refused a connection: {1}", _kind, ex.Message);
        }
        catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException)
        {
            if (!Stopping.IsCancellationRequested) Log.Warning("{0}: a connection broke off: {1}", _kind, ex.Message);
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
