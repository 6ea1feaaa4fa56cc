using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Akka.Event;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// What the two socket side channels (<see cref="BulkChannel"/> for weights, <see cref="ActivationLink"/> for
/// activations) share: the opening exchange and exact reads. A client opens with <c>magic[4] | version u32 |
/// token[16]</c> (the one-time token an actor message gave it); the server answers one status byte, 0 = go, else
/// an error text (<c>u16 length | UTF-8</c>) and the connection closes.
/// </summary>
public static class SideChannel
{
    public const int HelloBytes = 4 + 4 + 16;

    public static void ReadExactly(Socket s, Span<byte> into)
    {
        while (into.Length > 0)
        {
            int n = s.Receive(into);
            if (n == 0) throw new EndOfStreamException("the connection closed");
            into = into[n..];
        }
    }

    public static void SendAll(Socket s, ReadOnlySpan<byte> data)
    {
        while (data.Length > 0) data = data[s.Send(data)..];
    }

    public static byte[] ErrorText(string text)
    {
        var utf8 = System.Text.Encoding.UTF8.GetBytes(text.Length > 1000 ? text[..1000] : text);
        var b = new byte[2 + utf8.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(b, (ushort)utf8.Length);
        utf8.CopyTo(b, 2);
        return b;
    }

    public static string ReadErrorText(Socket s)
    {
        Span<byte> len = stackalloc byte[2];
        ReadExactly(s, len);
        var text = new byte[BinaryPrimitives.ReadUInt16LittleEndian(len)];
        ReadExactly(s, text);
        return System.Text.Encoding.UTF8.GetString(text);
    }

    /// <summary>The client's opening: magic, this node's protocol version, the token.</summary>
    public static byte[] Hello(ReadOnlySpan<byte> magic, byte[] token)
    {
        var hello = new byte[HelloBytes];
        magic.CopyTo(hello);
        BinaryPrimitives.WriteUInt32LittleEndian(hello.AsSpan(4), Protocol.Version);
        token.AsSpan(0, Math.Min(16, token.Length)).CopyTo(hello.AsSpan(8));
        return hello;
    }

    /// <summary>Sends the hello and reads the server's answer; a refusal is a <see cref="ClusterException"/> naming <paramref name="what"/>.</summary>
    public static void Open(Socket s, ReadOnlySpan<byte> magic, byte[] token, string what)
    {
        s.Send(Hello(magic, token));
        Span<byte> status = stackalloc byte[1];
        ReadExactly(s, status);
        if (status[0] != 0) throw new Checkpoints.ClusterException($"{what} refused: {ReadErrorText(s)}");
    }

    /// <summary>
    /// Reads a client's hello on the server side; returns the token (hex) when magic and version are right, else
    /// refuses the client with the reason and returns null.
    /// </summary>
    public static string? AcceptHello(Socket s, ReadOnlySpan<byte> magic, string expected)
    {
        var hello = new byte[HelloBytes];
        ReadExactly(s, hello);
        if (!hello.AsSpan(0, 4).SequenceEqual(magic))
        {
            Refuse(s, $"not a ShardPipe {expected} client");
            return null;
        }
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(hello.AsSpan(4));
        if (version != Protocol.Version)
        {
            Refuse(s, $"protocol version {version}, this node speaks {Protocol.Version}");
            return null;
        }
        return Convert.ToHexString(hello, 8, 16);
    }

    public static void Accept(Socket s) => s.Send(new byte[] { 0 });

    public static void Refuse(Socket s, string why)
    {
        s.Send(new byte[] { 1 });
        s.Send(ErrorText(why));
    }

    /// <summary>A listener's bind address: an IP literal, or the first IPv4 address the name resolves to.</summary>
    public static IPAddress BindAddress(string host) =>
        IPAddress.TryParse(host, out var ip) ? ip : Dns.GetHostAddresses(host).First(a => a.AddressFamily == AddressFamily.InterNetwork);
}

/// <summary>
/// A side channel's listener: one-time tokens for the transfers actor messages offered (each with what the
/// connection will need, expiring), an accept loop, and a dedicated thread per accepted connection, which
/// checks the opening and claims its token before the channel's own protocol (<see cref="Serve"/>) runs.
/// </summary>
public abstract class SideChannelListener<TPending> : IDisposable where TPending : class
{
    private readonly TcpListener _listener;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, (TPending Value, DateTime Expires)> _pending = new();
    private readonly byte[] _magic;
    private readonly string _kind;
    protected readonly CancellationTokenSource Stopping = new();
    protected readonly ILoggingAdapter Log;

    public string Host { get; }
    public int Port { get; }

    /// <param name="kind">The channel's name in logs and refusals ("bulk channel", "activation link").</param>
    protected SideChannelListener(string kind, byte[] magic, string bindHost, string advertisedHost, int port, ILoggingAdapter log, int receiveBuffer = 0)
    {
        _kind = kind;
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
            throw new Checkpoints.ClusterException($"{kind}: cannot listen on {bindHost}:{port}: {ex.Message}");
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
            if (SideChannel.AcceptHello(s, _magic, _kind) is not { } token) return;
            if (!_pending.TryRemove(token, out var p) || p.Expires < DateTime.UtcNow)
            {
                SideChannel.Refuse(s, "unknown or expired token");
                return;
            }
            SideChannel.Accept(s);
            Serve(s, p.Value);
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

    /// <summary>The channel's protocol on an accepted, authenticated connection (on its own thread; the socket is disposed after).</summary>
    protected abstract void Serve(Socket s, TPending pending);

    public virtual void Dispose()
    {
        Stopping.Cancel();
        _listener.Stop();
        _pending.Clear();
    }
}
