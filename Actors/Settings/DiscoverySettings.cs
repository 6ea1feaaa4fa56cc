using Akka.Configuration;

namespace ShardPipe.Actors.Settings;

/// <summary>How nodes find each other without a seed list (<c>shardpipe.discovery</c>).</summary>
public enum DiscoveryMethod
{
    /// <summary>Seed nodes or <c>--join</c>, as before.</summary>
    None,
    /// <summary>A fixed list of management endpoints (<c>host:port</c>) in the config.</summary>
    Config,
    /// <summary>DNS: the A/AAAA records of the service name, each at the management port (<see cref="Hosting.DnsDiscovery"/>).</summary>
    Dns,
    /// <summary>The Kubernetes API: pods matching a label selector, at their port named <c>port-name</c>.</summary>
    KubernetesApi,
}

/// <summary>
/// Cluster bootstrap through discovery (<c>shardpipe.discovery</c>) and the node's plaintext management HTTP endpoint
/// (<c>shardpipe.management</c>: the bootstrap contact point and the <c>/alive</c>, <c>/ready</c> probes); defaults in
/// reference.conf. Every check names the setting at fault.
/// </summary>
public sealed record DiscoverySettings(
    DiscoveryMethod Method,
    string ServiceName,
    IReadOnlyList<string> Endpoints,
    int RequiredContactPoints,
    TimeSpan StableMargin,
    TimeSpan Interval,
    string PodLabelSelector,
    string PodNamespace,
    string PortName,
    bool ManagementEnabled,
    string ManagementHostname,
    int ManagementPort)
{
    public bool Enabled => Method != DiscoveryMethod.None;

    /// <summary>The method as written in the config: config, dns, kubernetes-api ("" = none).</summary>
    public string MethodName => Method switch
    {
        DiscoveryMethod.Config => "config",
        DiscoveryMethod.Dns => "dns",
        DiscoveryMethod.KubernetesApi => "kubernetes-api",
        _ => "",
    };

    /// <summary>Reads and validates both sections of <paramref name="config"/> (over the reference defaults).</summary>
    /// <exception cref="InvalidInputException">A setting that cannot be used; the message names it.</exception>
    public static DiscoverySettings From(Config config)
    {
        var all = ReferenceConfig.Over(config);
        var d = all.GetConfig("shardpipe.discovery");
        var m = all.GetConfig("shardpipe.management");
        var method = (d.GetString("method") ?? "").Trim().ToLowerInvariant() switch
        {
            "" or "off" or "none" => DiscoveryMethod.None,
            "config" => DiscoveryMethod.Config,
            "dns" => DiscoveryMethod.Dns,
            "kubernetes-api" => DiscoveryMethod.KubernetesApi,
            var other => throw Bad("discovery.method", $"'{other}' is not one of config, dns, kubernetes-api (or \"\" for seed nodes)"),
        };
        string service = (d.GetString("service-name") ?? "").Trim();
        var endpoints = d.GetStringList("endpoints")?.Select(e => e.Trim()).ToList() ?? new List<string>();
        int required = Int(d, "discovery", "required-contact-points");
        var stable = Duration(d, "discovery", "stable-margin");
        var interval = Duration(d, "discovery", "interval");
        bool managementEnabled = (m.GetString("enabled") ?? "auto").Trim().ToLowerInvariant() switch
        {
            "auto" => method != DiscoveryMethod.None,
            "on" or "true" or "yes" => true,
            "off" or "false" or "no" => false,
            var other => throw Bad("management.enabled", $"'{other}' is not auto, on or off"),
        };
        int port = Int(m, "management", "port");
        var settings = new DiscoverySettings(method, service, endpoints, required, stable, interval,
            (d.GetString("pod-label-selector") ?? "").Trim(), (d.GetString("pod-namespace") ?? "").Trim(), (d.GetString("port-name") ?? "").Trim(),
            managementEnabled, (m.GetString("hostname") ?? "").Trim(), port);
        if (port is < 0 or > 65535) throw Bad("management.port", $"{port} is not a TCP port (0-65535)");
        if (!settings.Enabled) return settings;

        if (!managementEnabled)
            throw Bad("management.enabled", $"is off, but discovery ({settings.MethodName}) needs the management endpoint: contact points are probed over it");
        if (port == 0)
            throw Bad("management.port", "must be a fixed port under discovery: other nodes probe this node's contact point at it");
        if (service.Length == 0 || !service.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_'))
            throw Bad("discovery.service-name", $"'{service}' is not a service name (letters, digits, '-', '.', '_')");
        if (required < 1) throw Bad("discovery.required-contact-points", $"must be at least 1, not {required}");
        if (stable <= TimeSpan.Zero) throw Bad("discovery.stable-margin", "must be positive");
        if (interval <= TimeSpan.Zero) throw Bad("discovery.interval", "must be positive");
        switch (method)
        {
            case DiscoveryMethod.Config:
                if (endpoints.Count == 0)
                    throw Bad("discovery.endpoints", "is empty: method = config needs the management endpoints (host:port) of the nodes that may form the cluster");
                foreach (var e in endpoints) ParseEndpoint(e);
                if (endpoints.Count < required)
                    throw Bad("discovery.required-contact-points", $"is {required}, but discovery.endpoints lists only {endpoints.Count}: the cluster would never form");
                break;
            case DiscoveryMethod.KubernetesApi:
                if (settings.PodLabelSelector.Length == 0) throw Bad("discovery.pod-label-selector", "is empty: method = kubernetes-api needs a label selector (e.g. \"app={0}\")");
                if (settings.PortName.Length == 0) throw Bad("discovery.port-name", "is empty: method = kubernetes-api finds each pod's management port by its name");
                break;
        }
        return settings;
    }

    /// <summary>Splits a <c>host:port</c> endpoint (IPv6 as <c>[::1]:8558</c>).</summary>
    public static (string Host, int Port) ParseEndpoint(string endpoint)
    {
        int colon = endpoint.LastIndexOf(':');
        string host = colon > 0 ? endpoint[..colon].Trim('[', ']') : "";
        if (colon <= 0 || host.Length == 0 || !int.TryParse(endpoint[(colon + 1)..], out int port) || port is < 1 or > 65535)
            throw Bad("discovery.endpoints", $"'{endpoint}' is not host:port (a node's management endpoint, e.g. 10.0.0.5:8558)");
        return (host, port);
    }

    private static int Int(Config section, string name, string key)
    {
        try { return section.GetInt(key); }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        { throw Bad($"{name}.{key}", $"'{section.GetString(key)}' is not an integer"); }
    }

    private static TimeSpan Duration(Config section, string name, string key)
    {
        try { return section.GetTimeSpan(key); }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        { throw Bad($"{name}.{key}", $"'{section.GetString(key)}' is not a duration (e.g. 5s)"); }
    }

    private static InvalidInputException Bad(string key, string problem) => new($"shardpipe.{key}: {problem}");
}
