using Akka.Actor;
using Akka.Configuration;
using Akka.Remote;
using ShardPipe.Actors.Client;
using ShardPipe.Host.Bench;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors.Security;

/// <summary>
/// The attack that stopped a plaintext cluster (README, Security): a system that never joined sends Akka's own
/// <c>HandOverToMe</c> to every node's coordinator manager and the cluster daemon a <c>Down</c> naming a node. Against
/// node processes on the default config — which means TLS, here with certificates made as <c>shardpipe cert</c> makes
/// them — nothing it sends arrives: the cluster keeps its members, its epoch and its tokens.
/// </summary>
[Collection("cluster")]
public sealed class StrangerAttackTests
{
    private static readonly long[][] Prompt = { new long[] { 5, 17, 42, 9, 3 } };

    [Fact]
    public async Task A_stranger_cannot_hand_over_the_coordinator_or_down_a_node_of_a_default_cluster()
    {
        using var nodes = new NodeProcesses(3, _ => "shardpipe.devices = [ { device = cpu, budget = \"1GiB\" } ]", secure: true);
        await using var client = ShardPipeClient.Connect(ContactPoints.Parse(nodes.Contacts), nodes.ClientConfig);
        try { await client.WaitForNodesAsync(3, TimeSpan.FromSeconds(90)); }
        catch (ClusterException ex) { throw new Xunit.Sdk.XunitException($"{ex.Message}\n{Logs(nodes)}"); }
        var loaded = await client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(2));
        var before = await client.RunAsync(Requests.Generate(Prompt, null, 12) with { IgnoreEos = true }, loaded.Stages, TimeSpan.FromSeconds(60));
        var members = (await client.StatusAsync(TimeSpan.FromSeconds(10))).Nodes.Order().ToArray();

        // The stranger: Akka's stock remoting (no certificate), on loopback like the nodes.
        using var stranger = ActorSystem.Create("shardpipe", ConfigurationFactory.ParseString(
            "akka.actor.provider = remote\nakka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }\nakka.loglevel = OFF\nakka.stdout-loglevel = OFF"));
        var failures = new System.Collections.Concurrent.ConcurrentDictionary<string, bool>();
        var everyNodeRefused = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Action<AssociationErrorEvent> onError = e =>
        {
            failures[$"{e.RemoteAddress.Host}:{e.RemoteAddress.Port}"] = true;
            if (failures.Count >= nodes.Count) everyNodeRefused.TrySetResult();
        };
        var listener = stranger.ActorOf(Props.Create(() => new AssociationWatcher(onError)));
        stranger.EventStream.Subscribe(listener, typeof(AssociationErrorEvent));

        var addresses = nodes.Contacts.Split(',').Select(c => new Address("akka.tcp", "shardpipe", "127.0.0.1", int.Parse(c.Split(':')[1]))).ToArray();
        // Both messages are Akka's own internals, built as a hostile peer would.
        object Internal(Type anchor, string name, params object[] args) => Activator.CreateInstance(anchor.Assembly.GetType(name, throwOnError: true)!,
            System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance, null, args, null)!;
        var handOver = typeof(Akka.Cluster.Tools.Singleton.ClusterSingletonManager).Assembly.GetType("Akka.Cluster.Tools.Singleton.HandOverToMe", throwOnError: true)!
            .GetProperty("Instance", System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Static)!.GetValue(null)!;
        var down = Internal(typeof(Akka.Cluster.Cluster), "Akka.Cluster.ClusterUserAction+Down", addresses[2]);
        foreach (var node in addresses)
        {
            stranger.ActorSelection(new RootActorPath(node) / "user" / "coordinator").Tell(handOver);
            stranger.ActorSelection(new RootActorPath(node) / "system" / "cluster" / "core" / "daemon").Tell(down);
        }
        // Every node refused the stranger's connection (a TLS endpoint does not speak plaintext Akka): nothing was delivered.
        await everyNodeRefused.Task.WaitAsync(TimeSpan.FromSeconds(60));

        var status = await client.StatusAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(("ready", loaded.PlanEpoch), ($"{status.State}".ToLowerInvariant(), status.PlanEpoch));
        Assert.Equal(members, status.Nodes.Order().ToArray());
        var after = await client.RunAsync(Requests.Generate(Prompt, null, 12) with { IgnoreEos = true }, status.Stages, TimeSpan.FromSeconds(60));
        Assert.Equal(before.NewTokens, after.NewTokens);
        Assert.Equal(0, after.RecoveredFaults);
        for (int i = 1; i <= 3; i++) Assert.False(nodes[i].HasExited, $"node-{i} exited:\n{nodes.Tail(i)}");
        await stranger.Terminate();
    }

    private static string Logs(NodeProcesses nodes) => string.Join("\n", Enumerable.Range(1, nodes.Count).Select(i => $"node-{i}:\n{nodes.Tail(i)}"));

    private sealed class AssociationWatcher : ReceiveActor
    {
        public AssociationWatcher(Action<AssociationErrorEvent> onError) => Receive<AssociationErrorEvent>(onError);
    }
}
