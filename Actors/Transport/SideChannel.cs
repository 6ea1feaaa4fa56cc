using System.Buffers.Binary;
using System.Net.Sockets;
using System.Net;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Transport;

/// <summary>
/// What the two socket side channels (<see cref="BulkChannel"/> for weights, <see cref="ActivationLink"/> for
/// activations) share: the opening exchange and exact reads. A client opens with <c>magic[4] | version u32 |
/// token[16]</c> (the one-time token an actor message gave it); the server answers one status byte, 0 = go, else
/// an error text (<c>u16 length | UTF-8</c>) and the connection closes. Everything runs over a <see cref="Stream"/>:
/// the socket itself, or TLS over it when the cluster runs mutual TLS (<see cref="Security.ClusterTls"/>: the
/// handshake comes first, then the opening).
/// </summary>
public static class SideChannel
{
    public const int HelloBytes = 4 + 4 + 16;

    public static void ReadExactly(Stream s, Span<byte> into)
    {
        while (into.Length > 0)
        {
            int n = s.Read(into);
            if (n == 0) throw new EndOfStreamException("the connection closed");
            into = into[n..];
        }
    }

    public static byte[] ErrorText(string text)
    {
        var utf8 = System.Text.Encoding.UTF8.GetBytes(text.Length > 1000 ? text[..1000] : text);
        var b = new byte[2 + utf8.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(b, (ushort)utf8.Length);
        utf8.CopyTo(b, 2);
        return b;
    }

    public static string ReadErrorText(Stream s)
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
    public static void Open(Stream s, ReadOnlySpan<byte> magic, byte[] token, string what)
    {
        s.Write(Hello(magic, token));
        s.Flush();
        Span<byte> status = stackalloc byte[1];
        ReadExactly(s, status);
        if (status[0] != 0) throw new ClusterException($"{what} refused: {ReadErrorText(s)}");
    }

    /// <summary>
    /// Reads a client's hello on the server side; returns the token (hex) when magic and version are right, else
    /// refuses the client with the reason and returns null.
    /// </summary>
    public static string? AcceptHello(Stream s, ReadOnlySpan<byte> magic, string expected)
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

    public static void Accept(Stream s)
    {
        s.Write(new byte[] { 0 });
        s.Flush();
    }

    public static void Refuse(Stream s, string why)
    {
        s.Write([1, .. ErrorText(why)]);
        s.Flush();
    }

    /// <summary>A listener's bind address: an IP literal, or the first IPv4 address the name resolves to.</summary>
    public static IPAddress BindAddress(string host) =>
        IPAddress.TryParse(host, out var ip) ? ip : Dns.GetHostAddresses(host).First(a => a.AddressFamily == AddressFamily.InterNetwork);
}
