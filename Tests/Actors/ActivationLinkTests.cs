using ShardPipe.Actors.Diagnostics;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Akka.Actor;
using Akka.Event;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Workers;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;
using ShardPipe.Actors.Transport;
using ShardPipe.Actors.Settings;

namespace ShardPipe.Tests.Actors;

/// <summary>Activation links: the frame format, the listener against hostile peers, and generation over real links.</summary>
/// <remarks>In the cluster collection: its listener counts frames in the same process-wide counter the cluster test reads.</remarks>
[Collection("cluster")]
public sealed class ActivationLinkTests : IDisposable
{
    private readonly ActorSystem _system = ActorSystem.Create("links", "akka.loglevel = OFF");
    private readonly ActivationListener _listener;

    public ActivationLinkTests() => _listener = new ActivationListener(ActivationLinkSettings.From(Akka.Configuration.ConfigurationFactory.ParseString("shardpipe.activation-link.max-frame-size = 1MiB")), NoLogger.Instance, new NodeDiagnostics());

    public void Dispose()
    {
        _listener.Dispose();
        _system.Terminate().Wait(TimeSpan.FromSeconds(10));
    }

    private static StageInput Step(int step, int hiddenFloats)
    {
        var hidden = new byte[hiddenFloats * 4];
        new Random(step).NextBytes(hidden);
        var state = new GenerationState(8, true, new long[] { 2 }, 0, new[] { false }, new SamplingSettings(true, 0, 0, 1, 0));
        return new StageInput($"r{step}", step, 1, new TensorPayload("F32", new long[] { 1, 1, hiddenFloats }, hidden), null,
            new[] { new long[] { 1, 1, 1 } }, new[] { new long[] { 2 } }, "akka://links/user/caller", state, 1, null);
    }

    internal static (Socket Client, Socket Server) Pair()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        var client = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.Connect(IPAddress.Loopback, ((IPEndPoint)l.LocalEndpoint).Port);
        var server = l.AcceptSocket();
        l.Stop();
        return (client, server);
    }

    private static void AssertSameStep(StageInput expected, object actual)
    {
        var got = Assert.IsType<StageInput>(actual);
        Assert.Equal(expected.RequestId, got.RequestId);
        Assert.Equal(expected.Step, got.Step);
        Assert.Equal(expected.Hidden!.Data.ToArray(), got.Hidden!.Data.ToArray());
    }

    [Fact]
    public async Task Frames_of_any_size_cross_in_order_and_a_clean_close_ends_the_stream()
    {
        var (client, server) = Pair();
        using (client)
        using (server)
        {
            // Small frames share the reader's buffer; the 400 KB one is larger than it.
            var steps = new[] { Step(1, 768), Step(2, 100_000), Step(3, 16), Step(4, 768) };
            var writer = Task.Run(() =>
            {
                foreach (var s in steps) ActivationLink.WriteFrame(Ns(client), ActivationLink.Manifest, MessageCodec.Encode(s));
                client.Shutdown(SocketShutdown.Send);
            });
            var reader = new ActivationLink.FrameReader(Ns(server), 1 << 20);
            foreach (var s in steps)
            {
                var (manifest, body, _) = reader.Next() ?? throw new Xunit.Sdk.XunitException("stream ended early");
                AssertSameStep(s, MessageCodec.Decode(body, manifest));
            }
            Assert.Null(reader.Next());
            await writer;
        }
    }

    [Fact]
    public void Corrupt_foreign_oversized_and_truncated_frames_are_typed_errors()
    {
        byte[] Good() => MessageCodec.Encode(Step(1, 768));
        byte[] Frame(string manifest, byte[] body, ulong? checksum = null, int? length = null)
        {
            var m = System.Text.Encoding.ASCII.GetBytes(manifest);
            const int h = ActivationLink.HeaderBytes; // length u32 | sent-at i64 | manifest length u8
            var f = new byte[h + m.Length + body.Length + 8];
            BinaryPrimitives.WriteUInt32LittleEndian(f, (uint)(length ?? body.Length));
            f[h - 1] = (byte)m.Length;
            m.CopyTo(f, h);
            body.CopyTo(f, h + m.Length);
            BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(h + m.Length + body.Length), checksum ?? System.IO.Hashing.XxHash3.HashToUInt64(body));
            return f;
        }
        var cases = new (string Expect, byte[] Bytes, Type Error)[]
        {
            ("XXH3 checksum", Frame("stage", Good(), checksum: 42), typeof(ProtocolException)),
            ("carries only 'stage'", Frame("load", Good()), typeof(ProtocolException)),
            ("exceeds the link's maximum", Frame("stage", Good(), length: (1 << 20) + 1), typeof(ProtocolException)),
            ("middle of a frame", Frame("stage", Good())[..100], typeof(EndOfStreamException)),
        };
        foreach (var (expect, bytes, error) in cases)
        {
            var (client, server) = Pair();
            using (client)
            using (server)
            {
                client.Send(bytes);
                client.Shutdown(SocketShutdown.Send);
                var ex = Assert.Throws(error, () => new ActivationLink.FrameReader(Ns(server), 1 << 20).Next());
                Assert.Contains(expect, ex.Message);
            }
        }
    }

    private static NetworkStream Ns(Socket s) => new(s, ownsSocket: false);

    private Socket Connect() => new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 10_000 };

    [Fact]
    public void The_listener_refuses_bad_openings_and_hands_frames_to_the_worker_that_offered_them()
    {
        var delivered = new BlockingCollection<(object Message, IActorRef From)>();
        var target = _system.ActorOf(Props.Empty, "target");
        var from = _system.ActorOf(Props.Empty, "from");
        byte[] token = _listener.Offer(target, from, (m, f) => delivered.Add((m, f)));

        // Wrong magic, forged token: refused with a reason, nothing delivered.
        foreach (var (magic, tok, expect) in new[] { ("SPB1"u8.ToArray(), token, "not a ShardPipe"), (ActivationLink.Magic, new byte[16], "unknown or expired token") })
        {
            using var s = Connect();
            s.Connect(IPAddress.Loopback, _listener.Port);
            var ex = Assert.Throws<ClusterException>(() => SideChannel.Open(Ns(s), magic, tok, "link"));
            Assert.Contains(expect, ex.Message);
        }

        using (var s = Connect())
        {
            s.Connect(IPAddress.Loopback, _listener.Port);
            SideChannel.Open(Ns(s), ActivationLink.Magic, token, "link");
            var step = Step(5, 768);
            ActivationLink.WriteFrame(Ns(s), ActivationLink.Manifest, MessageCodec.Encode(step));
            Assert.True(delivered.TryTake(out var got, TimeSpan.FromSeconds(10)), "the frame was not delivered");
            AssertSameStep(step, got.Message);
            Assert.Equal(from, got.From);
            // Garbage on a live link closes it; the listener keeps serving.
            s.Send(new byte[] { 9, 0, 0, 0, 5, (byte)'s', (byte)'t', (byte)'a', (byte)'g', (byte)'e', 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0, 0, 0, 0, 0, 0 });
            Assert.Equal(0, s.Receive(new byte[1])); // the listener hung up
        }
        // A worker that throws on delivery closes that link only; the node's process lives on.
        using (var s = Connect())
        {
            s.Connect(IPAddress.Loopback, _listener.Port);
            SideChannel.Open(Ns(s), ActivationLink.Magic, _listener.Offer(target, from, (_, _) => throw new InvalidOperationException("worker broke")), "link");
            ActivationLink.WriteFrame(Ns(s), ActivationLink.Manifest, MessageCodec.Encode(Step(7, 16)));
            Assert.Equal(0, s.Receive(new byte[1]));
        }
        // The token was one-time; a fresh offer works after the hostile peer.
        using (var s = Connect())
        {
            s.Connect(IPAddress.Loopback, _listener.Port);
            Assert.Throws<ClusterException>(() => SideChannel.Open(Ns(s), ActivationLink.Magic, token, "link"));
        }
        using (var s = Connect())
        {
            s.Connect(IPAddress.Loopback, _listener.Port);
            SideChannel.Open(Ns(s), ActivationLink.Magic, _listener.Offer(target, from, (m, f) => delivered.Add((m, f))), "link");
            ActivationLink.WriteFrame(Ns(s), ActivationLink.Manifest, MessageCodec.Encode(Step(6, 16)));
            Assert.True(delivered.TryTake(out var got, TimeSpan.FromSeconds(10)));
            Assert.Equal(6, ((StageInput)got.Message).Step);
        }
    }
}

/// <summary>Generation over real links between three nodes equals the same model in one process, with links on, off, or unreachable.</summary>
[Collection("cluster")]
public class ActivationLinkClusterTests
{
    private static readonly string Model = TestPaths.Model("llama_untied");
    private static readonly long[][] Prompt = { new long[] { 5, 17, 42, 9, 3 } };
    private const int NewTokens = 12;

    private static long[] SingleProcessTokens()
    {
        var m = PreTrainedModel.FromPretrained(Model);
        var r = TokenGenerator.Greedy(m, Prompt, null, new GenerationOptions { MaxNewTokens = NewTokens, IgnoreEos = true });
        m.Release();
        return r.Sequences[0][Prompt[0].Length..];
    }

    private static Generate Request() => new(Guid.NewGuid().ToString("N"), Prompt, null, NewTokens, true, new SamplingSettings(true, 0, 0, 1, 0));

    [Theory]
    [InlineData("on")]
    [InlineData("off")]
    [InlineData("unreachable")] // offered at an address where nothing listens: the sender falls back to actor messages
    public async Task Generation_over_activation_links_equals_one_process(string mode)
    {
        string? config = mode switch
        {
            "off" => "shardpipe.activation-link.enabled = off",
            "unreachable" => "shardpipe.activation-link { public-hostname = \"127.0.0.2\", send-timeout = 1s }",
            _ => null,
        };
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB", extraConfig: _ => config);
        var loaded = await cluster.Client.LoadAsync(Requests.Load(Model), TimeSpan.FromMinutes(1));
        Assert.Equal(3, loaded.DeviceMap.Select(e => e.Device.Split('/')[0]).Distinct().Count());
        var expected = SingleProcessTokens();
        var diagnostics = cluster.Nodes.Select(n => NodeDiagnostics.For(n.System)).ToList();
        long Sent() => diagnostics.Sum(d => d.LinkFramesSent);
        long Received() => diagnostics.Sum(d => d.LinkFramesReceived);
        // Links come up just after the load (their connection is asynchronous): a request sent before then goes
        // partly over actor messages, and must give the same tokens either way.
        var early = await cluster.Client.RunAsync(Request(), loaded.Stages, TimeSpan.FromSeconds(30));
        Assert.Equal(expected, early.NewTokens[0]);
        // Three boundaries per token: node-1 → node-2 → node-3 → node-1.
        if (mode == "on") await Eventually.True(() => diagnostics.Sum(d => d.LinksUp) >= 3, TimeSpan.FromSeconds(20), "activation links up");
        long sentBefore = Sent();
        var outcome = await cluster.Client.RunAsync(Request(), loaded.Stages, TimeSpan.FromSeconds(30));
        Assert.Equal(expected, outcome.NewTokens[0]);
        if (mode == "on") Assert.True(Sent() - sentBefore >= 2 * NewTokens, $"only {Sent() - sentBefore} frames of a request with all links up went over them");
        long sent = Sent(), received = Received();
        if (mode == "on")
        {
            // Each decode step crosses a node boundary at least twice (3 stages, the token looping back).
            Assert.True(sent >= NewTokens, $"only {sent} frames went over activation links");
            Assert.Equal(sent, received);
        }
        else Assert.Equal(0, sent);
    }
}
