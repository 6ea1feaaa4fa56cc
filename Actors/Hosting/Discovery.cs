using System.Globalization;
using Akka.Actor;
using Akka.Configuration;
using Akka.Management.Dsl;
using Akka.Management.Cluster.Bootstrap;
using ShardPipe.Actors.Settings;

namespace ShardPipe.Actors.Hosting;

/// <summary>
/// Cluster bootstrap by discovery and the management endpoint of one node: turns <c>shardpipe.discovery</c> and
/// <c>shardpipe.management</c> (<see cref="DiscoverySettings"/>) into Akka.Management / Akka.Discovery config before the
/// ActorSystem starts, then binds the management endpoint (<see cref="ManagementEndpoint"/>: the bootstrap contact
/// point and the probes; nothing on this plaintext port changes the cluster) and starts Cluster Bootstrap in place of
/// a seed-node join.
/// </summary>
public sealed class Discovery
{
    public DiscoverySettings Settings { get; }

    private Discovery(DiscoverySettings settings) => Settings = settings;

    /// <summary>
    /// Validates the discovery settings of an effective node config (reference defaults under it) and returns that
    /// config with the Akka.Management and Akka.Discovery settings they imply on top.
    /// </summary>
    /// <exception cref="InvalidInputException">A bad setting, or discovery together with seed nodes or <paramref name="join"/>.</exception>
    public static Config Prepare(Config config, string? join, out Discovery discovery)
    {
        var settings = DiscoverySettings.From(config);
        discovery = new Discovery(settings);
        if (!settings.ManagementEnabled) return config;
        if (settings.Enabled)
        {
            var seeds = config.GetStringList("akka.cluster.seed-nodes");
            if (seeds is { Count: > 0 })
                throw new InvalidInputException($"shardpipe.discovery.method: '{settings.MethodName}' is set and so is akka.cluster.seed-nodes; a node finds the cluster by one or the other");
            if (join is not null)
                throw new InvalidInputException($"--join: shardpipe.discovery.method is set ('{settings.MethodName}'); a node finds the cluster by discovery or by --join, not both");
        }
        return ConfigurationFactory.ParseString(AkkaHocon(settings, config)).WithFallback(config);
    }

    /// <summary>The management endpoint's host: the setting, else the remoting public-hostname, else its hostname.</summary>
    public static string ManagementHost(DiscoverySettings settings, Config config)
    {
        if (settings.ManagementHostname.Length > 0) return settings.ManagementHostname;
        string pub = config.GetString("akka.remote.dot-netty.tcp.public-hostname") ?? "";
        return pub.Length > 0 ? pub : config.GetString("akka.remote.dot-netty.tcp.hostname") ?? "127.0.0.1";
    }

    /// <summary>The Akka.Management and Akka.Discovery HOCON for <paramref name="settings"/>.</summary>
    public static string AkkaHocon(DiscoverySettings settings, Config config)
    {
        string host = ManagementHost(settings, config);
        var s = new System.Text.StringBuilder();
        s.AppendLine($"akka.management.http.hostname = {Q(host)}");
        s.AppendLine($"akka.management.http.port = {settings.ManagementPort}");
        if (!settings.Enabled) return s.ToString();

        string Seconds(TimeSpan t) => t.TotalMilliseconds.ToString(CultureInfo.InvariantCulture) + "ms";
        s.AppendLine("akka.management.cluster.bootstrap.contact-point-discovery {");
        s.AppendLine($"  service-name = {Q(settings.ServiceName)}");
        s.AppendLine("  discovery-method = akka.discovery");
        s.AppendLine($"  required-contact-point-nr = {settings.RequiredContactPoints}");
        s.AppendLine($"  stable-margin = {Seconds(settings.StableMargin)}");
        s.AppendLine($"  interval = {Seconds(settings.Interval)}");
        if (settings.Method == DiscoveryMethod.KubernetesApi) s.AppendLine($"  port-name = {Q(settings.PortName)}");
        s.AppendLine("}");
        // A and AAAA records carry no port: contact points are probed at this node's own management port.
        s.AppendLine($"akka.management.cluster.bootstrap.contact-point.fallback-port = {settings.ManagementPort}");
        // Every discovered endpoint counts, whatever its port (config lists may give each node its own port).
        s.AppendLine("akka.management.cluster.bootstrap.contact-point.filter-on-fallback-port = false");
        switch (settings.Method)
        {
            case DiscoveryMethod.Config:
                s.AppendLine("akka.discovery.method = config");
                s.AppendLine($"akka.discovery.config.services {{ {Q(settings.ServiceName)} {{ endpoints = [{string.Join(", ", settings.Endpoints.Select(Q))}] }} }}");
                break;
            case DiscoveryMethod.Dns:
                s.AppendLine("akka.discovery.method = shardpipe-dns");
                s.AppendLine($"akka.discovery.shardpipe-dns.class = {Q(typeof(DnsDiscovery).FullName + ", " + typeof(DnsDiscovery).Assembly.GetName().Name)}");
                break;
            case DiscoveryMethod.KubernetesApi:
                s.AppendLine("akka.discovery.method = kubernetes-api");
                s.AppendLine($"akka.discovery.kubernetes-api.pod-label-selector = {Q(settings.PodLabelSelector)}");
                if (settings.PodNamespace.Length > 0) s.AppendLine($"akka.discovery.kubernetes-api.pod-namespace = {Q(settings.PodNamespace)}");
                break;
        }
        return s.ToString();
    }

    /// <summary>
    /// Binds the management endpoint (when on) and, under discovery, starts Cluster Bootstrap. Returns whether
    /// bootstrap joins this node (the caller then joins no seed node itself).
    /// </summary>
    /// <exception cref="ClusterException">The management endpoint could not be bound (names host and port).</exception>
    public bool Start(ActorSystem system)
    {
        if (!Settings.ManagementEnabled) return false;
        ManagementEndpoint endpoint;
        string host = ManagementHost(Settings, system.Settings.Config);
        // Listening on every interface: peers reach this node on its remoting address.
        string advertised = host is "0.0.0.0" or "::" or "*" or "+" ? ManagementHost(Settings with { ManagementHostname = "" }, system.Settings.Config) : host;
        try { endpoint = ManagementEndpoint.Start(system, host, advertised, Settings.ManagementPort, Settings.Enabled); }
        catch (ClusterException)
        {
            system.Terminate().Wait(TimeSpan.FromSeconds(10));
            throw;
        }
        // Also when the node is killed (no coordinated shutdown): the port is free again.
        system.RegisterOnTermination(endpoint.Dispose);
        if (!Settings.Enabled) return false;
        var bootstrap = ClusterBootstrap.Get(system);
        // Tells bootstrap its own contact point (the address peers probe; the lowest one forms a new cluster).
        bootstrap.Routes(ManagementRouteProviderSettings.Create(endpoint.BaseUri, true));
        bootstrap.Start().GetAwaiter().GetResult();
        return true;
    }

    private static string Q(string value) => "\"" + value.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\"";
}
