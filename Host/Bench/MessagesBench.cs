using System.CommandLine;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Akka.Actor;
using Microsoft.Extensions.Logging;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Workers;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Host.Cli;
using ShardPipe.Messages;
using ShardPipe.Modeling.Core;
using static TorchSharp.torch;
using ShardPipe.Actors.Transport;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench messages</c>: (1) encode + decode of a 64 MiB fp32 tensor through the wire format beside a
/// plain copy of the same bytes into a preallocated buffer; (2) streaming that tensor as weights between two
/// cluster nodes (chunked, checksummed, acknowledged) beside a raw loopback TCP copy, in plaintext and under mutual
/// TLS (stream_ratio_vs_tcp_tls); (3) the same bytes as an activation sent in actor-message chunks.
/// </summary>
public static class MessagesBench
{
    private const int Mib = 1 << 20;

    public static Command Create()
    {
        var size = new Option<int>("--mib") { Description = "Tensor size in MiB", DefaultValueFactory = _ => 64 };
        var json = CommonOptions.Json();
        var cmd = new Command("messages", "Wire format and transfer throughput vs memcpy and raw TCP") { size, json };
        CommandAction.Set(cmd, (parse, log) => Run(parse.GetValue(size), parse.GetValue(json), log));
        return cmd;
    }

    private static async Task<int> Run(int mib, bool asJson, ILogger log)
    {
        TorchRuntime.Initialise();
        long bytes = (long)mib * Mib;
        BenchSupport.Say(asJson, $"bench messages: {mib} MiB fp32 tensor");
        using var t = rand(bytes / 4);

        // 1. Encode + decode vs memcpy.
        var dst = GC.AllocateUninitializedArray<byte>((int)bytes);
        var src = t.bytes.ToArray();
        // Steady state for both: a few unmeasured rounds first (the frame allocator settles on reused memory).
        double memcpy = Best(8, () => src.AsSpan().CopyTo(dst), warmup: 2);
        double codec = Best(8, () =>
        {
            var wire = MessageCodec.Encode(new ForwardResult("bench", TensorWire.ToPayload(t)));
            var back = (ForwardResult)MessageCodec.Decode(wire, "fwd-res");
            using var tensorBack = TensorWire.ToTensor(back.LastLogits);
        }, warmup: 3);
        BenchSupport.Say(asJson, $"  encode+decode: {Gbps(bytes, codec):0.00} GB/s; memcpy {Gbps(bytes, memcpy):0.00} GB/s");

        // 2. Weight streaming between two nodes vs raw TCP on loopback: plaintext, then a cluster under mutual TLS.
        using var tmp = new TempFolder();
        SafeTensorsWriter.Write(Path.Combine(tmp.Path, "model.safetensors"),
            new[] { TensorSource.FromBytes("big", DType.F32, new[] { bytes / 4 }, src) });
        var into = GC.AllocateUninitializedArray<byte>((int)bytes); // stands for the tensor storage a worker fills
        await using var cluster = await EmbeddedCluster.StartAsync(2, "node-1/cpu=1GiB,node-2/cpu=1GiB");
        var (stream, tcp, actorStream) = await StreamFigures(cluster, tmp.Path, src, into, actorRounds: 2);
        BenchSupport.Say(asJson, $"  weight stream node→node (bulk channel): {Gbps(bytes, stream):0.00} GB/s; raw TCP {Gbps(bytes, tcp):0.00} GB/s; as actor messages {Gbps(bytes, actorStream):0.00} GB/s");
        double streamTls, tcpTls;
        using (var certs = new BenchCertificates())
        {
            await using var tlsCluster = await EmbeddedCluster.StartAsync(2, "node-1/cpu=1GiB,node-2/cpu=1GiB", extraConfig: _ => certs.Hocon,
                clientConfig: Akka.Configuration.ConfigurationFactory.ParseString(certs.Hocon));
            (streamTls, tcpTls, _) = await StreamFigures(tlsCluster, tmp.Path, src, into, actorRounds: 0);
        }
        BenchSupport.Say(asJson, $"  weight stream node→node under mutual TLS: {Gbps(bytes, streamTls):0.00} GB/s; raw TCP {Gbps(bytes, tcpTls):0.00} GB/s (ratio {tcpTls / streamTls:0.000})");

        // 3. An activation of the same size as chunked actor messages.
        double activation = double.MaxValue;
        var payload = new ForwardResult("bench", TensorWire.ToPayload(t));
        for (int r = 0; r < 2; r++)
        {
            var got = new TaskCompletionSource<ForwardResult>(TaskCreationOptions.RunContinuationsAsynchronously);
            var sink = cluster.Nodes[1].System.ActorOf(Props.Create(() => new AssemblingSink(got)));
            var remoteSink = ((ExtendedActorSystem)cluster.Nodes[0].System).Provider.ResolveActorRef(Akka.Serialization.Serialization.SerializedActorPath(sink));
            var sw = Stopwatch.StartNew();
            foreach (var part in Chunking.Split(payload)) remoteSink.Tell(part);
            var back = await got.Task.WaitAsync(TimeSpan.FromMinutes(2));
            activation = Math.Min(activation, sw.Elapsed.TotalSeconds);
            if (back.LastLogits.Data.Length != bytes) throw new ShardPipeException("activation arrived truncated");
        }
        BenchSupport.Say(asJson, $"  activation as actor messages: {Gbps(bytes, activation):0.00} GB/s");

        BenchSupport.Finish(new JsonObject
        {
            ["bench"] = "messages",
            ["bytes"] = bytes,
            ["encode_decode_gbps"] = Math.Round(Gbps(bytes, codec), 3),
            ["memcpy_gbps"] = Math.Round(Gbps(bytes, memcpy), 3),
            ["encode_ratio_vs_memcpy"] = Math.Round(memcpy / codec, 4),
            ["stream_gbps"] = Math.Round(Gbps(bytes, stream), 3),
            ["tcp_gbps"] = Math.Round(Gbps(bytes, tcp), 3),
            ["stream_ratio_vs_tcp"] = Math.Round(tcp / stream, 4),
            ["stream_tls_gbps"] = Math.Round(Gbps(bytes, streamTls), 3),
            ["tcp_gbps_beside_tls"] = Math.Round(Gbps(bytes, tcpTls), 3),
            ["stream_ratio_vs_tcp_tls"] = Math.Round(tcpTls / streamTls, 4),
            ["actor_stream_gbps"] = Math.Round(Gbps(bytes, actorStream), 3),
            ["activation_gbps"] = Math.Round(Gbps(bytes, activation), 3),
        });
        return 0;
    }

    private static double Gbps(long bytes, double s) => bytes / s / 1e9;

    /// <summary>
    /// The tensor streamed from node 1's shard reader to node 2 over the bulk channel, and the same bytes over a raw
    /// loopback socket, taking turns under the same background (best of 7 each); then over actor messages.
    /// </summary>
    private static async Task<(double Stream, double Tcp, double ActorStream)> StreamFigures(EmbeddedCluster cluster, string folder, byte[] src, byte[] into, int actorRounds)
    {
        var reader = ((ExtendedActorSystem)cluster.Nodes[1].System).Provider.ResolveActorRef($"{cluster.Nodes[0].Address}/user/shard-reader");
        var tls = cluster.Nodes[1].Settings.Bulk.Endpoint.Tls;
        async Task<double> StreamOnce(bool bulk)
        {
            Array.Clear(into);
            var done = new TaskCompletionSource<StreamedTensor>(TaskCreationOptions.RunContinuationsAsynchronously);
            var sw = Stopwatch.StartNew();
            cluster.Nodes[1].System.ActorOf(Props.Create(typeof(StreamReceiverActor), reader,
                new ReadTensor(Guid.NewGuid().ToString("N"), folder, null, "big", 16, bulk), done, TimeSpan.FromSeconds(60)));
            var got = await done.Task;
            if (got.Offer is { } offer) await Task.Run(() => BulkChannel.Receive(offer, into, TimeSpan.FromSeconds(60), "'big'", tls));
            else if (bulk) throw new ShardPipeException("the shard reader offered no bulk channel");
            else got.Bytes!.CopyTo(into, 0);
            double s = sw.Elapsed.TotalSeconds;
            if (!into.AsSpan().SequenceEqual(src)) throw new ShardPipeException("streamed bytes differ from the source");
            return s;
        }
        double stream = double.MaxValue, actorStream = double.MaxValue, tcp = double.MaxValue;
        RawTcp(src);
        await StreamOnce(true); // warm-up: listener start, JIT
        for (int r = 0; r < 7; r++)
        {
            tcp = Math.Min(tcp, Best(1, () => RawTcp(src)));
            stream = Math.Min(stream, await StreamOnce(true));
        }
        for (int r = 0; r < actorRounds; r++) actorStream = Math.Min(actorStream, await StreamOnce(false));
        return (stream, tcp, actorStream);
    }

    private static double Best(int n, Action a, int warmup = 0)
    {
        for (int i = 0; i < warmup; i++) a();
        double best = double.MaxValue;
        for (int i = 0; i < n; i++)
        {
            var sw = Stopwatch.StartNew();
            a();
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return best;
    }

    /// <summary>The same bytes through one loopback TCP connection, 1 MiB writes and reads.</summary>
    private static void RawTcp(byte[] data)
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var receive = Task.Run(() =>
        {
            using var s = listener.AcceptTcpClient();
            using var stream = s.GetStream();
            var buf = new byte[Mib];
            long total = 0;
            int n;
            while ((n = stream.Read(buf)) > 0) total += n;
            return total;
        });
        using (var c = new TcpClient())
        {
            c.Connect(IPAddress.Loopback, port);
            using var stream = c.GetStream();
            for (int off = 0; off < data.Length; off += Mib) stream.Write(data, off, Math.Min(Mib, data.Length - off));
        }
        if (receive.Result != data.Length) throw new ShardPipeException("raw TCP copy lost bytes");
        listener.Stop();
    }

    private sealed class AssemblingSink : ReceiveActor
    {
        public AssemblingSink(TaskCompletionSource<ForwardResult> done)
        {
            var chunks = new ChunkAssembler();
            Receive<MessageChunk>(c =>
            {
                if (chunks.Add(c) is ForwardResult r)
                {
                    done.TrySetResult(r);
                    Context.Stop(Self);
                }
            });
        }
    }

    private sealed class TempFolder : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("shardpipe-msgbench").FullName;
        public void Dispose() => Directory.Delete(Path, recursive: true);
    }
}
