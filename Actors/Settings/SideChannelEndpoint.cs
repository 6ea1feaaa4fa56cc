using Akka.Configuration;
using ShardPipe.Actors.Security;

namespace ShardPipe.Actors.Settings;

/// <summary>
/// Where a socket side channel listens and what it offers peers, read the same way for the bulk channel and the
/// activation links: <c>enabled</c>, <c>port</c>, the listen address (its <c>hostname</c>, else the remoting
/// hostname) and the offered one (its <c>public-hostname</c>, else the remoting public-hostname, else the listen
/// address — the machine's name when that is 0.0.0.0), and the cluster's TLS (<c>shardpipe.tls</c>; null = plaintext),
/// which both ends of every side-channel connection use: the node's one <see cref="ClusterTls"/>, loaded once and handed down.
/// </summary>
public sealed record SideChannelEndpoint(bool Enabled, string BindHost, string AdvertisedHost, int Port, ClusterTls? Tls = null)
{
    public static SideChannelEndpoint From(Config config, string section, ClusterTls? tls)
    {
        var s = config.GetConfig(section);
        string remoteHost = config.GetString("akka.remote.dot-netty.tcp.hostname");
        string publicHost = config.GetString("akka.remote.dot-netty.tcp.public-hostname", "");
        string bind = s.GetString("hostname") is { Length: > 0 } h ? h : remoteHost;
        string advertised = s.GetString("public-hostname") is { Length: > 0 } ph ? ph
            : publicHost.Length > 0 ? publicHost : bind is "0.0.0.0" or "" ? System.Net.Dns.GetHostName() : bind;
        int port = s.GetInt("port");
        if (port is < 0 or > 65535) throw new ConfigurationException($"{section}.port must be 0..65535, not {port}");
        return new SideChannelEndpoint(s.GetBoolean("enabled"), bind, advertised, port, tls);
    }
}
