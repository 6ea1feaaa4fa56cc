using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Akka.Actor;
using Akka.Configuration;
using Akka.Event;
using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors.Security;

/// <summary>
/// A side channel against peers that open and then say nothing: a frame header declaring the maximum followed by
/// silence holds only the bytes that came and is cut at the frame deadline; thousands of idle connections are
/// capped and closed at the opening deadline, and a real link still opens.
/// </summary>
[Collection("cluster")]
public sealed class SideChannelBoundsTests
{
    private static (Socket Client, Socket Server) Pair() => ActivationLinkTests.Pair();

    [Fact]
    public void A_256_MiB_frame_header_then_silence_allocates_what_arrived_and_ends_at_the_frame_deadline()
    {
        var (client, server) = Pair();
        using (client)
        using (server)
        {
            var header = new byte[ActivationLink.HeaderBytes + 5];
            BinaryPrimitives.WriteUInt32LittleEndian(header, 256u << 20);
            header[12] = 5;
            "stage"u8.CopyTo(header.AsSpan(ActivationLink.HeaderBytes));
            client.Send(header);
            client.Send(new byte[3000]); // a little of the body, then nothing

            Exception? failure = null;
            long allocated = 0;
            var clock = Stopwatch.StartNew();
            var reader = new Thread(() =>
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                try { new ActivationLink.FrameReader(new NetworkStream(server), 256 << 20, server, TimeSpan.FromSeconds(1)).Next(); }
                catch (Exception ex) { failure = ex; }
                allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            });
            reader.Start();
            Assert.True(reader.Join(TimeSpan.FromSeconds(20)), "the reader is still waiting for the rest of the frame");
            Assert.Contains("did not arrive within 1 s", Assert.IsType<ShardPipe.ProtocolException>(failure).Message);
            Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(0.9), TimeSpan.FromSeconds(10));
            // The first megabyte at most, never the declared 256 MiB.
            Assert.InRange(allocated, 0, ActivationLink.FrameReader.UpfrontBodyBytes + (1 << 20));
        }
    }

    [Fact]
    public void A_large_frame_that_arrives_is_read_whole_as_its_bytes_come()
    {
        var (client, server) = Pair();
        using (client)
        using (server)
        {
            var body = new byte[5 << 20];
            new Random(3).NextBytes(body);
            var sender = new Thread(() => ActivationLink.WriteFrame(new NetworkStream(client), "stage", body));
            sender.Start();
            var frame = new ActivationLink.FrameReader(new NetworkStream(server), 8 << 20, server, TimeSpan.FromSeconds(20)).Next();
            sender.Join();
            Assert.NotNull(frame);
            Assert.Equal(body, frame.Value.Body);
            Assert.Equal(0, server.ReceiveTimeout); // between frames the link may idle
        }
    }

    [Fact]
    public async Task Five_thousand_idle_connections_are_capped_then_closed_at_the_opening_deadline_and_a_real_link_still_opens()
    {
        using var system = ActorSystem.Create("bounds", "akka.loglevel = OFF");
        using var listener = new ActivationListener(ActivationLinkSettings.From(ConfigurationFactory.ParseString(
            "shardpipe.activation-link { max-frame-size = 1MiB, max-connections = 64, opening-timeout = 2s }")), NoLogger.Instance, new NodeDiagnostics());
        var idle = new List<Socket>();
        int peak = 0;
        try
        {
            for (int i = 0; i < 5000; i++)
            {
                var s = new Socket(SocketType.Stream, ProtocolType.Tcp);
                try { s.Connect(IPAddress.Loopback, listener.Port); idle.Add(s); }
                catch (SocketException) { s.Dispose(); } // the backlog was full for a moment: fine, still a stranger kept out
                if (i % 100 == 0) peak = Math.Max(peak, listener.Connections);
            }
            Assert.InRange(peak, 0, 64);
            await Eventually.True(() => listener.RefusedAtCap > 0, TimeSpan.FromSeconds(20), "connections beyond the cap are closed on accept");
            // After the opening deadline nothing a stranger opened is held.
            await Eventually.True(() => listener.Connections == 0, TimeSpan.FromSeconds(30), "idle connections closed at the opening deadline");
        }
        finally
        {
            foreach (var s in idle) s.Dispose();
        }

        // A peer with a token opens its link and its frame is delivered.
        var delivered = new TaskCompletionSource<object>(TaskCreationOptions.RunContinuationsAsynchronously);
        var token = listener.Offer(ActorRefs.Nobody, ActorRefs.Nobody, (m, _) => delivered.TrySetResult(m));
        using var link = new Socket(SocketType.Stream, ProtocolType.Tcp);
        link.Connect(IPAddress.Loopback, listener.Port);
        using var stream = new NetworkStream(link);
        SideChannel.Open(stream, ActivationLink.Magic, token, "link");
        var release = new ShardPipe.Messages.StageBatch(Array.Empty<ShardPipe.Messages.StageInput>(), new[] { "r1" });
        ActivationLink.WriteFrame(stream, ActivationLink.BatchManifest, ShardPipe.Messages.MessageCodec.Encode(release));
        Assert.IsType<ShardPipe.Messages.StageBatch>(await delivered.Task.WaitAsync(TimeSpan.FromSeconds(10)));
    }
}
