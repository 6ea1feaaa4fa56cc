using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Tools.Singleton;
using Akka.Configuration;
using Akka.Event;
using ShardPipe.Actors.Coordination;
using ShardPipe.Actors.Workers;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Modeling.Core;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Membership;

namespace ShardPipe.Actors.Hosting;

/// <summary>
/// One ShardPipe cluster node: an ActorSystem from a HOCON host config (over ShardPipe's reference.conf), the
/// coordinator singleton where the role says so, a proxy to it, and on workers the shard reader and one device
/// worker per configured device.
/// </summary>
public sealed class ShardPipeNode : IAsyncDisposable
{
    public const string SystemName = Roles.SystemName;

    public ActorSystem System { get; }
    public NodeSettings Settings { get; }
    public IActorRef Coordinator { get; }
    public Address Address => Cluster.Get(System).SelfAddress;

    private ShardPipeNode(ActorSystem system, NodeSettings settings, IActorRef coordinator)
    {
        System = system;
        Settings = settings;
        Coordinator = coordinator;
    }

    public static Config Reference => ReferenceConfig.Value;

    /// <summary>Starts a node; <paramref name="join"/> (an address such as akka.tcp://shardpipe@127.0.0.1:4053; under TLS, akka.ssl.tcp — either is taken) joins a running cluster when the config names no seed nodes.</summary>
    /// <param name="warnPlaintext">Log a warning when the config has no TLS (a node facing a network; embedded loopback clusters stay quiet).</param>
    public static ShardPipeNode Start(Config hostConfig, string? join = null, int equalShareOf = 1, bool warnPlaintext = false)
    {
        var config = Discovery.Prepare(ReferenceConfig.Over(hostConfig), join, out var discovery);
        var system = ActorSystem.Create(SystemName, Security.ClusterTls.SystemSetup(config, out var tls));
        if (tls is null && warnPlaintext)
            Logging.GetLogger(system, "tls").Warning(Security.NodeTransportRule.InsecureWarning);
        else if (tls is not null)
            Logging.GetLogger(system, "tls").Info("mutual TLS on (certificate {0})", tls.Certificate.Subject);
        var address = Cluster.Get(system).SelfAddress;
        var settings = NodeSettings.From(config, tls, equalShareOf);
        if (settings.NodeName.Length == 0) settings = settings with { NodeName = $"{address.Host}:{address.Port}" };
        if (settings.IsCoordinator)
            system.ActorOf(ClusterSingletonManager.Props(CoordinatorActor.Props(settings), PoisonPill.Instance,
                ClusterSingletonManagerSettings.Create(system).WithRole(Roles.Coordinator).WithSingletonName(Roles.SingletonName)), Roles.SingletonName);
        if (settings.IsCoordinator && config.GetBoolean("shardpipe.fast-failover"))
            system.ActorOf(FailoverActor.Props(), "failover");
        if (config.GetBoolean("shardpipe.crash-probe"))
            system.ActorOf(CrashProbeActor.Props(), "crash-probe");
        system.ActorOf(Props.Create(() => new HandshakeActor(settings, settings.DebugProtocolVersion ?? Protocol.Version)), "handshake");
        var proxy = system.ActorOf(ClusterSingletonProxy.Props($"/user/{Roles.SingletonName}",
            ClusterSingletonProxySettings.Create(system).WithRole(Roles.Coordinator).WithSingletonName(Roles.SingletonName)), "coordinator-proxy");
        FaultHooks.FromConfig(system, config);
        if (settings.IsWorker)
        {
            TorchRuntime.Initialise();
            if (settings.ComputeThreads > 0)
            {
                TorchSharp.torch.set_num_threads(settings.ComputeThreads);
                CoreArbiter.Shared.Cores = settings.ComputeThreads;
            }
            system.ActorOf(Props.Create(() => new ShardReaderActor(settings.Bulk, settings.HasLocal)), "shard-reader");
            ActivationListener? links = null;
            if (settings.Links.Endpoint.Enabled)
            {
                var log = Logging.GetLogger(system, "activation-link");
                try
                {
                    links = new ActivationListener(settings.Links, log, NodeDiagnostics.For(system));
                    system.RegisterOnTermination(links.Dispose);
                }
                catch (ClusterException ex)
                {
                    log.Warning("{0}; this node's workers take activations as actor messages", ex.Message);
                }
            }
            for (int i = 0; i < settings.Devices.Count; i++)
            {
                var (device, budget) = settings.Devices[i];
                system.ActorOf(DeviceWorkerActor.Props(settings, device, budget, proxy, links), $"device-{i}");
            }
        }
        var seeds = config.GetStringList("akka.cluster.seed-nodes");
        if ((seeds is null || seeds.Count == 0) && !discovery.Start(system))
            Cluster.Get(system).Join(join is null ? address : Address.Parse(Security.ClusterTls.ForTransport(join, tls is not null)));
        return new ShardPipeNode(system, settings, proxy);
    }

    /// <summary>HOCON for a node on loopback: name, roles, devices with budgets, port (0 = any).</summary>
    public static Config LoopbackConfig(string nodeName, IEnumerable<string> roles, IEnumerable<(string Device, long Budget)> devices,
        int port = 0, bool localCheckpoints = true, string? extra = null)
    {
        string devs = string.Join(", ", devices.Select(d => $"{{ device = \"{d.Device}\", budget = \"{d.Budget}\" }}"));
        string hocon = $@"
akka.remote.dot-netty.tcp.port = {port}
akka.remote.dot-netty.tcp.hostname = 127.0.0.1
akka.cluster.roles = [{string.Join(", ", roles)}]
# In-process nodes are stopped by Kill() as by a crash: no coordinated shutdown (no leave); DisposeAsync leaves.
akka.coordinated-shutdown.run-by-actor-system-terminate = off
# Loopback costs nothing to gossip over: members are Up in a fraction of the default second-long rounds.
akka.cluster.periodic-tasks-initial-delay = 100ms
akka.cluster.gossip-interval = 200ms
akka.cluster.leader-actions-interval = 200ms
shardpipe.node-name = ""{nodeName}""
shardpipe.devices = [{devs}]
shardpipe.local-checkpoints = {(localCheckpoints ? "on" : "off")}
{extra}";
        return ConfigurationFactory.ParseString(hocon);
    }

    /// <summary>
    /// The node left the cluster because it was asked to (a drain told it to leave, or a leave was issued for it): its
    /// system shut down for <see cref="CoordinatedShutdown.ClusterLeavingReason"/>, not because it was downed.
    /// </summary>
    public bool LeftOnRequest => CoordinatedShutdown.Get(System).ShutdownReason is CoordinatedShutdown.ClusterLeavingReason;

    public async ValueTask DisposeAsync()
    {
        await CoordinatedShutdown.Get(System).Run(CoordinatedShutdown.ClrExitReason.Instance);
    }

    /// <summary>
    /// Stops the node abruptly, as a crash: no coordinated shutdown and no leave (loopback nodes are configured with
    /// <c>run-by-actor-system-terminate = off</c>), so the others find it unreachable and down it.
    /// </summary>
    public async Task Kill()
    {
        var address = Address;
        await System.Terminate();
        // A crashed process frees its port; in one process full of short-lived ActorSystems another one could bind it
        // at once and answer the dead node's peers as if it were a new incarnation. Hold the port (bound, not
        // listening: peers get "connection refused", as from a crashed process on a live machine) until disposal.
        try
        {
            var holder = new global::System.Net.Sockets.Socket(global::System.Net.Sockets.AddressFamily.InterNetwork, global::System.Net.Sockets.SocketType.Stream, global::System.Net.Sockets.ProtocolType.Tcp);
            holder.Bind(new global::System.Net.IPEndPoint(global::System.Net.IPAddress.Parse(address.Host!), address.Port!.Value));
            _portHolder = holder;
        }
        catch (Exception ex) when (ex is global::System.Net.Sockets.SocketException or FormatException) { } // taken already, or not an IPv4 literal
    }

    private global::System.Net.Sockets.Socket? _portHolder;

    /// <summary>Frees the port a killed node still holds (see <see cref="Kill"/>).</summary>
    public void ReleasePort()
    {
        _portHolder?.Dispose();
        _portHolder = null;
    }
}
