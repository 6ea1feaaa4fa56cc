using System.Net;
using Akka.Cluster;
using ShardPipe.Actors.Client;
using ShardPipe.Actors.Hosting;
using ShardPipe.Host.Bench;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Three nodes over real TCP under mutual TLS, with no seed list and no --join: each is given only the management
/// endpoints of the three (config discovery). Cluster Bootstrap forms one cluster from them, the model it serves
/// matches Hugging Face, and /alive and /ready answer as documented before and after the node joined.
/// </summary>
[Collection("cluster")]
public class DiscoveryClusterTests
{
    private static async Task<(HttpStatusCode Status, string Body)> Get(HttpClient http, int port, string path)
    {
        using var response = await http.GetAsync($"http://127.0.0.1:{port}{path}");
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Three_nodes_bootstrap_by_config_discovery_without_seed_nodes_and_serve_the_model()
    {
        using var tmp = new TempDir();
        string certs = tmp.Sub("certs");
        TlsClusterTests.MakeCerts(certs, "node-1", "node-2", "node-3", "client");
        var ports = Enumerable.Range(0, 3).Select(_ => Loopback.ReservedPort()).ToArray();
        string endpoints = string.Join(", ", ports.Select(p => $"\"127.0.0.1:{p}\""));
        string Extra(int i) => TlsClusterTests.Tls(certs, $"node-{i + 1}") + $@"
shardpipe.discovery {{ method = config, endpoints = [{endpoints}], required-contact-points = 3, stable-margin = 1s, interval = 500ms }}
shardpipe.management.port = {ports[i]}
akka.management.cluster.bootstrap.contact-point.probe-interval = 1s";
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        var nodes = new List<ShardPipeNode>();
        try
        {
            // node-1 alone: alive, not ready — it found 3 contact points but only its own answers, so it forms nothing.
            nodes.Add(ShardPipeNode.Start(ShardPipeNode.LoopbackConfig("node-1", new[] { "coordinator", "worker" }, new[] { ("cpu", 1L << 30) }, extra: Extra(0))));
            Assert.Empty(nodes[0].System.Settings.Config.GetStringList("akka.cluster.seed-nodes"));
            var alive = await Get(http, ports[0], "/alive");
            Assert.Equal(HttpStatusCode.OK, alive.Status);
            Assert.Contains("\"alive\":true", alive.Body);
            await Task.Delay(TimeSpan.FromSeconds(3));
            var notReady = await Get(http, ports[0], "/ready");
            Assert.Equal(HttpStatusCode.ServiceUnavailable, notReady.Status);
            Assert.Contains("\"ready\":false", notReady.Body);
            Assert.Contains("\"member\":\"Removed\"", notReady.Body); // not a member yet
            Assert.DoesNotContain(Cluster.Get(nodes[0].System).State.Members, m => m.Status == MemberStatus.Up);
            // Routes that are not mounted answer 404 (nothing here can change the cluster).
            Assert.Equal(HttpStatusCode.NotFound, (await Get(http, ports[0], "/cluster/members")).Status);
            Assert.Equal(HttpStatusCode.NotFound, (await Get(http, ports[0], "/remote/address")).Status);

            for (int i = 1; i < 3; i++)
                nodes.Add(ShardPipeNode.Start(ShardPipeNode.LoopbackConfig($"node-{i + 1}", new[] { "coordinator", "worker" }, new[] { ("cpu", 1L << 30) }, extra: Extra(i))));

            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(40);
            while (!nodes.All(n => Cluster.Get(n.System).State.Members.Count(m => m.Status == MemberStatus.Up) == 3))
            {
                if (DateTime.UtcNow > deadline)
                    throw new ClusterException("no cluster formed by discovery: " + string.Join("; ", nodes.Select(n =>
                        $"{n.Settings.NodeName} sees {string.Join(", ", Cluster.Get(n.System).State.Members.Select(m => $"{m.Address}:{m.Status}"))}")));
                await Task.Delay(100);
            }
            // One cluster: every node sees the same three members.
            var members = nodes.Select(n => string.Join(",", Cluster.Get(n.System).State.Members.Select(m => m.Address.ToString()).Order())).Distinct().ToList();
            Assert.Single(members);
            Assert.All(nodes, n => Assert.Equal("akka.ssl.tcp", n.Address.Protocol));
            foreach (var p in ports)
            {
                var ready = await Get(http, p, "/ready");
                Assert.Equal(HttpStatusCode.OK, ready.Status);
                Assert.Contains("\"member\":\"Up\"", ready.Body);
                Assert.Equal(HttpStatusCode.OK, (await Get(http, p, "/alive")).Status);
            }
            // POST to a probe is not served.
            using (var post = await http.PostAsync($"http://127.0.0.1:{ports[0]}/ready", new StringContent("")))
                Assert.Equal(HttpStatusCode.MethodNotAllowed, post.StatusCode);

            await using var client = ShardPipeClient.Connect(nodes.Select(n => n.Address).ToList(),
                Akka.Configuration.ConfigurationFactory.ParseString(TlsClusterTests.Tls(certs, "client")));
            await client.WaitForNodesAsync(3, TimeSpan.FromSeconds(30));
            var r = new ReferenceData("llama_untied");
            var loaded = await client.LoadAsync(Requests.Load(r.Folder, r.Variant), TimeSpan.FromMinutes(2));
            Assert.True(loaded.Stages.Select(s => Akka.Actor.ActorPath.Parse(s.WorkerPath).Address).Distinct().Count() > 1, "the model is split across nodes");
            await ReferenceOnCluster.Check(client, loaded, r, "on 3 nodes bootstrapped by config discovery");
        }
        finally
        {
            await Task.WhenAll(nodes.Select(async n =>
            {
                try { await n.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10)); }
                catch (TimeoutException) { await n.Kill(); n.ReleasePort(); }
            }));
        }
        // The management endpoints are gone with their nodes (closed by the systems' termination callbacks).
        await Task.WhenAll(nodes.Select(n => n.System.WhenTerminated)).WaitAsync(TimeSpan.FromSeconds(30));
        await ShardPipe.Tests.Support.Eventually.True(async () =>
        {
            try { await Get(http, ports[0], "/alive"); return false; }
            catch (HttpRequestException) { return true; }
        }, TimeSpan.FromSeconds(10), "node-1's management endpoint closed");
    }

    [Fact]
    public async Task Three_node_processes_bootstrap_by_config_discovery_with_no_seed_list()
    {
        var ports = Enumerable.Range(0, 3).Select(_ => Loopback.ReservedPort()).ToArray();
        string endpoints = string.Join(", ", ports.Select(p => $"\"127.0.0.1:{p}\""));
        using var nodes = new NodeProcesses(3, i => $@"shardpipe.devices = [ {{ device = cpu, budget = ""1GiB"" }} ]
shardpipe.discovery {{ method = config, endpoints = [{endpoints}], required-contact-points = 3, stable-margin = 1s, interval = 500ms }}
shardpipe.management.port = {ports[i - 1]}", secure: true, seedNodes: false);
        await using var client = ShardPipeClient.Connect(ContactPoints.Parse(nodes.Contacts), nodes.ClientConfig);
        try { await client.WaitForNodesAsync(3, TimeSpan.FromSeconds(60)); }
        catch (ClusterException ex) { throw new Xunit.Sdk.XunitException($"{ex.Message}\n{string.Join("\n", Enumerable.Range(1, 3).Select(i => $"node-{i}:\n{nodes.Tail(i)}"))}"); }
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        // Registered workers may still be Joining at another node's view; each turns ready once it is Up.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        foreach (var p in ports)
        {
            var ready = await Get(http, p, "/ready");
            while (ready.Status != HttpStatusCode.OK && DateTime.UtcNow < deadline)
            {
                Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.Status);
                await Task.Delay(200);
                ready = await Get(http, p, "/ready");
            }
            Assert.Equal(HttpStatusCode.OK, ready.Status);
            Assert.Contains("\"member\":\"Up\"", ready.Body);
        }
        var r = new ReferenceData("llama_untied");
        var loaded = await client.LoadAsync(Requests.Load(r.Folder, r.Variant), TimeSpan.FromMinutes(2));
        await ReferenceOnCluster.Check(client, loaded, r, "on 3 node processes bootstrapped by config discovery");
        Assert.Equal(3, (await client.StatusAsync(TimeSpan.FromSeconds(10))).Nodes.Distinct().Count());
        for (int i = 1; i <= 3; i++) Assert.False(nodes[i].HasExited, $"node-{i} exited:\n{nodes.Tail(i)}");
    }

    [Fact]
    public async Task A_node_finds_itself_by_dns_discovery_and_forms_a_cluster()
    {
        // DNS A records of "localhost" at the management port: the only contact point is this node's own.
        int port = Loopback.ReservedPort();
        var node = ShardPipeNode.Start(ShardPipeNode.LoopbackConfig("solo", new[] { "coordinator", "worker" }, new[] { ("cpu", 1L << 28) },
            extra: $"shardpipe.discovery {{ method = dns, service-name = localhost, required-contact-points = 1, stable-margin = 1s, interval = 500ms }}\nshardpipe.management.port = {port}\nshardpipe.insecure = on"));
        try
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while ((await Get(http, port, "/ready")).Status != HttpStatusCode.OK)
            {
                if (DateTime.UtcNow > deadline) throw new ClusterException("the node did not form a cluster by DNS discovery: " + (await Get(http, port, "/ready")).Body);
                await Task.Delay(200);
            }
            Assert.Equal(MemberStatus.Up, Cluster.Get(node.System).SelfMember.Status);
        }
        finally { await node.DisposeAsync(); }
    }
}
