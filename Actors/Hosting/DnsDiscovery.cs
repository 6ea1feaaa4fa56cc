using System.Net;
using Akka.Actor;
using Akka.Discovery;

namespace ShardPipe.Actors.Hosting;

/// <summary>
/// <c>shardpipe.discovery.method = dns</c>: the A/AAAA records of the service name (e.g. a headless Kubernetes
/// Service), each a contact point at the management port (bootstrap's fallback port). Akka.Discovery 1.5.73 names an
/// <c>akka-dns</c> method in its reference.conf but ships no class for it, so this one is ShardPipe's; it reads the
/// system resolver (no SRV records).
/// </summary>
public sealed class DnsDiscovery : ServiceDiscovery
{
    public DnsDiscovery(ExtendedActorSystem system) { }

    public override async Task<Resolved> Lookup(Lookup lookup, TimeSpan resolveTimeout)
    {
        using var cancel = new CancellationTokenSource(resolveTimeout);
        IPAddress[] addresses;
        try { addresses = await Dns.GetHostAddressesAsync(lookup.ServiceName, cancel.Token); }
        catch (System.Net.Sockets.SocketException) { addresses = Array.Empty<IPAddress>(); } // no such name (yet): nothing found
        var targets = addresses.Distinct().Select(a => new ResolvedTarget(a.ToString(), null, a)).ToList();
        return new Resolved(lookup.ServiceName, targets);
    }
}
