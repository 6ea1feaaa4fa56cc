using Akka.Actor;
using Akka.Configuration;
using ShardPipe.Actors.Coordination;
using ShardPipe.Actors.Membership;
using ShardPipe.Actors.Client;
using ShardPipe.Actors.Workers;
using ShardPipe.Modeling.Core;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Hosting;

/// <summary>
/// N ShardPipe nodes in this process, on loopback TCP ports, joined into one Akka cluster: the zero-setup path.
/// Every node may hold the coordinator (it starts on node 1, the oldest). Budgets come from <c>node/device=size</c>
/// specs, or the machine's available memory split equally. <see cref="Client"/> is not a member: it reaches the
/// cluster through every node as a contact point, so it outlives any one node.
/// </summary>
public sealed class EmbeddedCluster : IAsyncDisposable
{
    public IReadOnlyList<ShardPipeNode> Nodes { get; }
    public ShardPipeClient Client { get; }

    private EmbeddedCluster(IReadOnlyList<ShardPipeNode> nodes, Akka.Configuration.Config? clientConfig)
    {
        Nodes = nodes;
        Client = ShardPipeClient.Connect(nodes.Select(n => n.Address).ToList(), clientConfig);
    }

    /// <summary>Starts <paramref name="count"/> nodes (or the nodes named in <paramref name="nodeSpec"/>) and waits until all have registered.</summary>
    public static async Task<EmbeddedCluster> StartAsync(int count, string? nodeSpec = null, Func<int, string?>? extraConfig = null,
        Func<int, bool>? localCheckpoints = null, TimeSpan? timeout = null, int? computeThreads = null, string? offloadFolder = null,
        Akka.Configuration.Config? clientConfig = null)
    {
        var layout = Layout(count, nodeSpec);
        // N nodes in one process share its cores and libtorch's intra-op pool: give each node its share of the cores,
        // or their thread pools oversubscribe the machine and every hand-off between stages waits for a time slice.
        TorchRuntime.Initialise();
        TorchSharp.torch.set_num_threads(computeThreads ?? Math.Max(1, Environment.ProcessorCount / Math.Max(1, layout.Count)));
        // That split is the default of threads outside a step; each step takes its threads from the cores shared among
        // the stages computing at that moment (shardpipe.compute-share, CoreArbiter), so a stage computing alone uses all.
        CoreArbiter.Shared.Cores = computeThreads ?? Environment.ProcessorCount;
        var nodes = new List<ShardPipeNode>();
        try
        {
            for (int i = 0; i < layout.Count; i++)
            {
                var (name, devices) = layout[i];
                var roles = new[] { Roles.Coordinator, Roles.Worker };
                // A disk device writes what it converts under the offload folder, one subfolder per node.
                string? offload = offloadFolder is null ? null : $"shardpipe.offload-folder = \"{Path.Combine(offloadFolder, name).Replace("\\", "/")}\"";
                var config = ShardPipeNode.LoopbackConfig(name, roles, devices, 0, localCheckpoints?.Invoke(i) ?? true, string.Join("\n", new[] { offload, extraConfig?.Invoke(i) }.OfType<string>()));
                nodes.Add(ShardPipeNode.Start(config, i == 0 ? null : nodes[0].Address.ToString()));
            }
            var cluster = new EmbeddedCluster(nodes, clientConfig);
            await cluster.Client.WaitForNodesAsync(layout.Count, timeout ?? TimeSpan.FromSeconds(60));
            await cluster.WaitUntilAllUpAsync(timeout ?? TimeSpan.FromSeconds(60));
            return cluster;
        }
        catch
        {
            foreach (var n in nodes) await n.Kill();
            throw;
        }
    }

    /// <summary>
    /// Waits until every node sees every node as <c>Up</c>: the downing strategy counts only Up members, so a member
    /// still Joining or WeaklyUp (admitted before the cluster converged) would not count toward a majority.
    /// </summary>
    public async Task WaitUntilAllUpAsync(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!Nodes.All(n => Akka.Cluster.Cluster.Get(n.System).State.Members.Count(m => m.Status == Akka.Cluster.MemberStatus.Up) == Nodes.Count))
        {
            if (DateTime.UtcNow > deadline)
                throw new ClusterException("the cluster did not converge: " + string.Join("; ", Nodes.Select(n =>
                    $"{n.Settings.NodeName} sees {string.Join(", ", Akka.Cluster.Cluster.Get(n.System).State.Members.Select(m => $"{m.Address.Port}:{m.Status}"))}")));
            await Task.Delay(50);
        }
    }

    /// <summary>Node names and devices: from "w1/cpu=1GiB,w2/cpu=2GiB", else node-1..node-N with an equal share of available memory.</summary>
    public static List<(string Name, List<(string Device, long Budget)> Devices)> Layout(int count, string? nodeSpec)
    {
        if (nodeSpec is not null)
        {
            var parsed = MaxMemory.Parse(nodeSpec);
            if (parsed.Any(p => p.Device.Node is null)) throw new InvalidInputException("--nodes entries must be node/device=size, e.g. w1/cpu=2GiB");
            return parsed.GroupBy(p => p.Device.Node!).Select(g => (g.Key,
                g.Select(p => (p.Device.Kind == "cuda" ? $"cuda:{p.Device.Index}" : p.Device.Kind, (long)p.Bytes)).ToList())).ToList();
        }
        long share = MaxMemory.DefaultCpuBytes() / Math.Max(1, count);
        return Enumerable.Range(1, count).Select(i => ($"node-{i}", new List<(string, long)> { ("cpu", share) })).ToList();
    }

    /// <summary>
    /// Stops the whole cluster, quietly and at once: the coordinator is told first (<see cref="ClusterStopping"/>) so
    /// that no departure starts a recovery, then every node stops without a graceful leave — nobody stays behind to
    /// need one, and a leave of all members takes the gossip rounds of several seconds.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        await Client.DisposeAsync();
        var live = Nodes.Where(n => !n.System.WhenTerminated.IsCompleted).ToList();
        await Task.WhenAll(live.Select(StopCoordinatorOn));
        await Task.WhenAll(Nodes.Select(async node =>
        {
            await node.System.Terminate();
            node.ReleasePort();
        }));
    }

    /// <summary>Tells the coordinator, if this node hosts it, that the cluster stops; returns once it has heard.</summary>
    private static async Task StopCoordinatorOn(ShardPipeNode node)
    {
        var wait = TimeSpan.FromSeconds(2);
        try
        {
            var id = await node.System.ActorSelection($"/user/{Roles.SingletonName}/{Roles.SingletonName}").Ask<ActorIdentity>(new Identify(null), wait);
            if (id.Subject is { } coordinator) await coordinator.Ask<ClusterStopping>(ClusterStopping.Instance, wait);
        }
        catch (AskTimeoutException) { } // a node busy past the wait: it stops all the same
    }
}
