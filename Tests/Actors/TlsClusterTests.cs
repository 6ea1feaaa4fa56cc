using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Akka.Configuration;
using ShardPipe.Actors.Client;
using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Security;
using ShardPipe.Actors.Transport;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// A cluster under mutual TLS (certificates made as `shardpipe cert` makes them): Akka.Remote, the bulk channel and the
/// activation links all run over TLS and the model matches Hugging Face; a node, a client or a side-channel peer
/// without a certificate from the cluster's CA gets nowhere, and the cluster is unchanged by the attempts.
/// </summary>
[Collection("cluster")]
public class TlsClusterTests
{
    private const string PasswordEnv = "SHARDPIPE_TEST_TLS_PASSWORD";

    /// <summary>Makes a CA in <paramref name="dir"/> (once) and a certificate per name, as <c>shardpipe cert</c> does.</summary>
    internal static void MakeCerts(string dir, params string[] names)
    {
        Environment.SetEnvironmentVariable(PasswordEnv, "test-password");
        if (!File.Exists(Path.Combine(dir, ShardPipe.Actors.Security.CertificateAuthority.CaKeyFile)))
            ShardPipe.Actors.Security.CertificateAuthority.CreateCa(dir, "test-password");
        foreach (var n in names) ShardPipe.Actors.Security.CertificateAuthority.Issue(dir, n, "test-password");
    }

    internal static string Tls(string dir, string name) =>
        $"shardpipe.tls {{ enabled = on, certificate = \"{dir}/{name}.p12\", ca = \"{dir}/ca.crt\", password-env = {PasswordEnv}, handshake-timeout = 5s }}";

    [Fact]
    public async Task A_tls_cluster_matches_hugging_face_and_refuses_everyone_without_the_cluster_certificate()
    {
        using var tmp = new TempDir();
        string certs = tmp.Sub("certs"), foreign = tmp.Sub("foreign");
        MakeCerts(certs, "node-1", "node-2", "node-3", "client");
        MakeCerts(foreign, "intruder"); // a certificate of another CA

        // node-3 has no checkpoint: it streams its slice over the bulk channel; hops cross activation links.
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB",
            extraConfig: i => Tls(certs, $"node-{i + 1}") + "\nshardpipe.bulk-transfer.min-size = 1KiB", localCheckpoints: i => i != 2,
            clientConfig: ConfigurationFactory.ParseString(Tls(certs, "client")));
        var r = new ReferenceData("llama_untied");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(r.Folder, r.Variant), TimeSpan.FromMinutes(2));
        await ReferenceOnCluster.Check(cluster.Client, loaded, r, "on 3 nodes under TLS");
        Assert.True(NodeDiagnostics.For(cluster.Nodes[2].System).BulkBytesReceived > 0, "node-3 streamed its weights over the (TLS) bulk channel");
        Assert.True(cluster.Nodes.Sum(n => NodeDiagnostics.For(n.System).LinkFramesReceived) > 0, "activations crossed (TLS) activation links");

        // A client without TLS, and one with another CA's certificate, reach no coordinator.
        var contacts = cluster.Nodes.Select(n => n.Address).ToList();
        foreach (var clientTls in new[] { "", Tls(foreign, "intruder") })
        {
            await using var outsider = ShardPipeClient.Connect(contacts, ConfigurationFactory.ParseString(clientTls + "\nakka.loglevel = OFF"));
            await Assert.ThrowsAnyAsync<Exception>(() => outsider.StatusAsync(TimeSpan.FromSeconds(4)));
        }

        // A node with another CA's certificate (and one in plaintext) tries to join through node-1: never a member.
        foreach (var nodeTls in new[] { Tls(foreign, "intruder"), "" })
        {
            var intruder = ShardPipeNode.Start(ShardPipeNode.LoopbackConfig("intruder", new[] { "coordinator", "worker" }, new[] { ("cpu", 1L << 30) },
                extra: nodeTls + "\nakka.loglevel = OFF"), cluster.Nodes[0].Address.ToString());
            int? port = intruder.Address.Port;
            // The intruder's attempt to associate with node-1 fails (the event Akka.Remote publishes when it does).
            var refusedAssociation = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            intruder.System.EventStream.Subscribe(intruder.System.ActorOf(Akka.Actor.Props.Create(() => new AssociationWatcher(refusedAssociation))), typeof(Akka.Remote.RemotingLifecycleEvent));
            try
            {
                if (nodeTls.Length > 0)
                {
                    // Its outbound handshake fails (it refuses node-1's certificate, node-1 refuses its own): Akka stops it.
                    await intruder.System.WhenTerminated.WaitAsync(TimeSpan.FromSeconds(20));
                    Assert.True(ClusterTls.StoppedByHandshakeFailure(intruder.System), "the intruder was stopped by the failed handshake");
                }
                else await refusedAssociation.Task.WaitAsync(TimeSpan.FromSeconds(20));
                Assert.All(cluster.Nodes, n => Assert.DoesNotContain(Akka.Cluster.Cluster.Get(n.System).State.Members, m => m.Address.Port == port));
            }
            finally
            {
                if (!intruder.System.WhenTerminated.IsCompleted) await intruder.Kill();
                intruder.ReleasePort();
            }
        }

        // The side channels: another CA's certificate fails the handshake; plaintext gets no answer.
        var foreignTls = ClusterTls.From(ConfigurationFactory.ParseString(Tls(foreign, "intruder")))!;
        int linkPort = LinkPort(cluster.Nodes[0]);
        using (var s = new Socket(SocketType.Stream, ProtocolType.Tcp) { ReceiveTimeout = 10_000 })
        {
            s.Connect(IPAddress.Loopback, linkPort);
            Assert.Throws<TlsRefusedException>(() => foreignTls.Client(s, "127.0.0.1"));
        }
        using (var s = new Socket(SocketType.Stream, ProtocolType.Tcp) { ReceiveTimeout = 10_000 })
        {
            s.Connect(IPAddress.Loopback, linkPort);
            Assert.ThrowsAny<Exception>(() => SideChannel.Open(new NetworkStream(s), ActivationLink.Magic, new byte[16], "link"));
        }

        // Every node is still up and serving the same model under the same epoch, with the same tokens.
        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(10));
        Assert.Equal((ShardPipe.Messages.ClusterState.Ready, loaded.PlanEpoch, 3), (status.State, status.PlanEpoch, status.Nodes.Length));
        Assert.All(cluster.Nodes, n => Assert.Equal(Akka.Cluster.MemberStatus.Up, Akka.Cluster.Cluster.Get(n.System).SelfMember.Status));
        await ReferenceOnCluster.Check(cluster.Client, loaded, r, "on 3 nodes under TLS, after the intruders");
    }

    [Fact]
    public void Tls_settings_that_cannot_work_are_refused_at_start_naming_the_setting()
    {
        using var tmp = new TempDir();
        string certs = tmp.Sub("certs"), foreign = tmp.Sub("foreign");
        MakeCerts(certs, "node-1", "node-2");
        MakeCerts(foreign, "intruder");
        ConfigurationException Refused(string hocon) =>
            Assert.Throws<ConfigurationException>(() => ClusterTls.From(ConfigurationFactory.ParseString(hocon)));
        Assert.Contains("no certificate", Refused("shardpipe.tls.enabled = on").Message);
        Assert.Contains("neither ca nor pinned-thumbprints", Refused($"shardpipe.tls {{ enabled = on, certificate = \"{certs}/node-1.p12\" }}").Message);
        Assert.Contains("not found", Refused(Tls(certs, "node-9")).Message);
        Assert.Contains("not set", Refused(Tls(certs, "node-1").Replace(PasswordEnv, "SHARDPIPE_NO_SUCH_VARIABLE")).Message);
        // Its own certificate from another CA: its peers would refuse it, so it would never join.
        Assert.Contains("does not chain to the cluster's CA", Refused($"shardpipe.tls {{ enabled = on, certificate = \"{foreign}/intruder.p12\", ca = \"{certs}/ca.crt\", password-env = {PasswordEnv} }}").Message);
        Assert.Contains("40 hex digits", Refused(Tls(certs, "node-1").Replace("handshake-timeout", "pinned-thumbprints = [abc], handshake-timeout")).Message);
        // Pinning: only the listed certificates pass, even from the cluster's CA.
        var tls = ClusterTls.From(ConfigurationFactory.ParseString(Tls(certs, "node-1")))!;
        Assert.Null(tls.Refusal(tls.Certificate));
        var sameCa = ClusterTls.From(ConfigurationFactory.ParseString(Tls(certs, "node-2")))!.Certificate; // node-2: the same CA, not pinned
        Assert.Null(tls.Refusal(sameCa)); // unpinned: the CA decides
        var pinned = ClusterTls.From(ConfigurationFactory.ParseString(Tls(certs, "node-1").Replace("handshake-timeout", $"pinned-thumbprints = [\"{tls.Certificate.Thumbprint}\"], handshake-timeout")))!;
        Assert.Null(pinned.Refusal(tls.Certificate));
        Assert.NotNull(pinned.Refusal(sameCa)); // issued by the cluster's CA, but not one of the pinned
        var foreignCert = ClusterTls.From(ConfigurationFactory.ParseString(
            $"shardpipe.tls {{ enabled = on, certificate = \"{foreign}/intruder.p12\", ca = \"{foreign}/ca.crt\", password-env = {PasswordEnv} }}"))!.Certificate;
        Assert.Contains("does not chain", tls.Refusal(foreignCert));
        Assert.Contains("no certificate", tls.Refusal(null));
    }

    private static int LinkPort(ShardPipeNode node)
    {
        // The port its workers offer in LinkOffers (a stranger, or a test actor, gets a refusal and no port).
        int port = ShardPipe.Actors.Diagnostics.NodeDiagnostics.For(node.System).LinkListenerPort;
        Assert.NotEqual(0, port);
        return port;
    }

    /// <summary>Completes when this system's attempt to associate with a peer fails or is torn down.</summary>
    private sealed class AssociationWatcher : Akka.Actor.ReceiveActor
    {
        public AssociationWatcher(TaskCompletionSource done)
        {
            Receive<Akka.Remote.AssociationErrorEvent>(_ => done.TrySetResult());
            Receive<Akka.Remote.DisassociatedEvent>(_ => done.TrySetResult());
            ReceiveAny(_ => { });
        }
    }
}
