using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Akka.Event;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Workers;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;
using ShardPipe.Actors.Transport;

namespace ShardPipe.Tests.Actors;

/// <summary>The socket side channel for bulk weights: real listener, real safetensors file, hostile peers.</summary>
public sealed class BulkChannelTests : IDisposable
{
    private readonly TempDir _tmp = new();
    private readonly byte[] _bytes;
    private readonly SafeTensorsFile _file;
    private readonly BulkServer _server;

    public BulkChannelTests()
    {
        _bytes = new byte[3 * 65536 + 1234 * 4]; // not a whole number of chunks
        new Random(7).NextBytes(_bytes);
        SafeTensorsWriter.Write(_tmp.File("model.safetensors"), new[]
        {
            TensorSource.FromBytes("small", DType.F32, new long[] { 2 }, new byte[8]),
            TensorSource.FromBytes("big", DType.F32, new long[] { _bytes.Length / 4 }, _bytes),
        });
        _file = SafeTensorsFile.Open(_tmp.File("model.safetensors"));
        _server = new BulkServer("127.0.0.1", "127.0.0.1", 0, chunkBytes: 65536, window: 2, tls: null, NoLogger.Instance);
    }

    public void Dispose()
    {
        _server.Dispose();
        _file.Dispose();
        _tmp.Dispose();
    }

    private BulkOffer Offer(string transfer = "t1")
    {
        var info = _file.Get("big");
        var token = _server.Offer("'big'", _file, info, TimeSpan.FromSeconds(30));
        return new BulkOffer(transfer, _server.Host, _server.Port, token, "F32", info.Shape, info.ByteLength, _server.ChunkBytes, _server.Window);
    }

    [Fact]
    public async Task A_tensor_crosses_in_checked_chunks_straight_into_its_destination()
    {
        var into = new byte[_bytes.Length];
        BulkChannel.Receive(Offer(), into, TimeSpan.FromSeconds(10), "'big'");
        Assert.Equal(_bytes, into);
        // Several at once, each on its own connection.
        var many = Enumerable.Range(0, 4).Select(i => Task.Run(() =>
        {
            var b = new byte[_bytes.Length];
            BulkChannel.Receive(Offer($"p{i}"), b, TimeSpan.FromSeconds(10), "'big'");
            return b;
        })).ToArray();
        foreach (var b in await Task.WhenAll(many)) Assert.Equal(_bytes, b);
    }

    [Fact]
    public void A_token_serves_once_and_a_forged_one_is_refused()
    {
        var offer = Offer();
        BulkChannel.Receive(offer, new byte[_bytes.Length], TimeSpan.FromSeconds(10), "'big'");
        var again = Assert.Throws<ClusterException>(() => BulkChannel.Receive(offer, new byte[_bytes.Length], TimeSpan.FromSeconds(10), "'big'"));
        Assert.Contains("unknown or expired token", again.Message);
        var forged = Assert.Throws<ClusterException>(() => BulkChannel.Receive(offer with { Token = new byte[16] }, new byte[_bytes.Length], TimeSpan.FromSeconds(10), "'big'"));
        Assert.Contains("refused", forged.Message);
        Assert.Contains("'big'", forged.Message);
    }

    [Fact]
    public void A_size_mismatch_and_an_unreachable_channel_are_typed_errors()
    {
        Assert.Throws<ProtocolException>(() => BulkChannel.Receive(Offer(), new byte[10], TimeSpan.FromSeconds(10), "'big'"));
        int closedPort = Loopback.FreePort(); // free now: nothing listens there
        var ex = Assert.Throws<BulkUnreachableException>(() => BulkChannel.Receive(Offer() with { Port = closedPort }, new byte[_bytes.Length], TimeSpan.FromSeconds(5), "'big'"));
        Assert.Contains("unreachable", ex.Message);
    }

    /// <summary>A fake sender that answers the hello and then sends what the test scripts.</summary>
    private static BulkOffer FakeSender(Action<Socket> script, int total, out Task served)
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        served = Task.Run(() =>
        {
            using var s = listener.AcceptSocket();
            var hello = new byte[24];
            SideChannel.ReadExactly(new NetworkStream(s, ownsSocket: false), hello);
            s.Send(new byte[] { 0 });
            script(s);
            listener.Stop();
        });
        return new BulkOffer("fake", "127.0.0.1", port, new byte[16], "U8", new long[] { total }, total, 1024, 2);
    }

    private static byte[] Chunk(uint seq, byte[] data, ulong? checksum = null)
    {
        var frame = new byte[8 + data.Length + BulkChannel.TrailerBytes];
        BinaryPrimitives.WriteUInt32LittleEndian(frame, seq);
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(4), (uint)data.Length);
        data.CopyTo(frame, 8);
        BinaryPrimitives.WriteUInt64LittleEndian(frame.AsSpan(8 + data.Length), checksum ?? System.IO.Hashing.XxHash3.HashToUInt64(data));
        return frame;
    }

    [Fact]
    public async Task Corrupt_reordered_oversized_and_truncated_streams_are_caught()
    {
        var data = Enumerable.Range(0, 1000).Select(i => (byte)i).ToArray();
        var cases = new (string Expect, Action<Socket> Script)[]
        {
            ("XXH3 checksum", s => s.Send(Chunk(0, data, checksum: 12345))),
            ("out of order", s => s.Send(Chunk(1, data))),
            ("out of bounds", s => s.Send(Chunk(0, new byte[1500]))),
            ("broke off", s => s.Send(Chunk(0, data)[..500])),
            ("failed at the sender: disk gone", s =>
            {
                var header = new byte[8];
                BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4), BulkChannel.ErrorFrame);
                s.Send(header);
                s.Send(SideChannel.ErrorText("disk gone"));
            }),
        };
        foreach (var (expect, script) in cases)
        {
            var offer = FakeSender(script, 1000, out var served);
            var ex = Assert.Throws<ClusterException>(() => BulkChannel.Receive(offer, new byte[1000], TimeSpan.FromSeconds(5), "'x'"));
            Assert.Contains(expect, ex.Message);
            Assert.Contains("'x'", ex.Message);
            await served.WaitAsync(TimeSpan.FromSeconds(5));
        }
    }

    [Fact]
    public async Task A_stalled_sender_times_out_the_receiver_without_a_hang()
    {
        var offer = FakeSender(s => Thread.Sleep(1500), 1000, out var served);
        var ex = Assert.Throws<ClusterException>(() => BulkChannel.Receive(offer, new byte[1000], TimeSpan.FromMilliseconds(500), "'x'"));
        Assert.Contains("broke off", ex.Message);
        await served.WaitAsync(TimeSpan.FromSeconds(5));
    }

    [Fact]
    public void The_sender_stops_at_its_window_of_unacknowledged_chunks()
    {
        var offer = Offer();
        using var s = new Socket(SocketType.Stream, ProtocolType.Tcp);
        s.Connect(offer.Host, offer.Port);
        var hello = new byte[24];
        BulkChannel.Magic.CopyTo(hello, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(hello.AsSpan(4), Protocol.Version);
        offer.Token.CopyTo(hello, 8);
        s.Send(hello);
        s.ReceiveTimeout = 1000;
        long received = 0;
        var buffer = new byte[1 << 20];
        try
        {
            while (true)
            {
                int n = s.Receive(buffer);
                if (n == 0) break;
                received += n;
            }
        }
        catch (SocketException) { } // nothing more within a second: the sender waits for acknowledgements
        Assert.Equal(1 + offer.Window * (BulkChannel.HeaderBytes + offer.ChunkBytes + BulkChannel.TrailerBytes), received); // status byte, then exactly the window
    }
}
