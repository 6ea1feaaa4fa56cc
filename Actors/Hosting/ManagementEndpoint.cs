using System.Collections.Immutable;
using System.Net;
using System.Text;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using Newtonsoft.Json;
using static Akka.Management.Cluster.Bootstrap.ContactPoint.HttpBootstrapJsonProtocol;

namespace ShardPipe.Actors.Hosting;

/// <summary>
/// A node's management endpoint (plaintext HTTP, GET only, JSON bodies), started by <see cref="Discovery"/>:
/// <c>/alive</c> — 200 while the process and its ActorSystem run (a liveness probe); <c>/ready</c> — 200 once this
/// node is an Up member, 503 before (not yet discovered, joining) and after (leaving, downed);
/// <c>/bootstrap/seed-nodes</c> (under discovery) — the Cluster Bootstrap contact point: this node's address and the
/// reachable members it sees, in Akka.Management's own JSON types, which peers' bootstrap probes read. Nothing else
/// is served: no route changes the cluster.
/// </summary>
/// <remarks>
/// Akka.Management 1.5.73 serves its routes through Ceen.Httpd 0.9.9, which the registry does not serve; 0.9.10 lacks
/// the method Akka.Http.Shim calls, so that server cannot start. This listener (System.Net.HttpListener) serves the
/// same contact-point route instead; discovery and the bootstrap decisions are Akka.Management's.
/// </remarks>
public sealed class ManagementEndpoint : IDisposable
{
    private readonly ActorSystem _system;
    private readonly HttpListener _listener = new();
    private readonly bool _bootstrap;
    private readonly ILoggingAdapter _log;

    /// <summary>The endpoint's base address as peers reach it (<c>http://host:port/</c>).</summary>
    public Uri BaseUri { get; }

    private ManagementEndpoint(ActorSystem system, string host, string advertised, int port, bool bootstrap)
    {
        _system = system;
        _bootstrap = bootstrap;
        _log = Logging.GetLogger(system, "management");
        bool any = host is "0.0.0.0" or "*" or "+" or "::";
        _listener.Prefixes.Add($"http://{(any ? "+" : host.Contains(':') ? $"[{host}]" : host)}:{port}/");
        BaseUri = new Uri($"http://{(advertised.Contains(':') ? $"[{advertised}]" : advertised)}:{port}/");
    }

    /// <summary>Binds the endpoint and starts serving.</summary>
    /// <exception cref="ClusterException">The address cannot be bound (taken, not this machine's); names it.</exception>
    /// <param name="host">Where to listen (0.0.0.0 = every interface).</param>
    /// <param name="advertised">The host peers reach it on (the bootstrap's own contact point).</param>
    public static ManagementEndpoint Start(ActorSystem system, string host, string advertised, int port, bool bootstrap)
    {
        var endpoint = new ManagementEndpoint(system, host, advertised, port, bootstrap);
        try { endpoint._listener.Start(); }
        catch (Exception ex) when (ex is HttpListenerException or System.Net.Sockets.SocketException or ArgumentException)
        {
            throw new ClusterException($"shardpipe.management: cannot serve HTTP at {host}:{port} ({ex.Message})");
        }
        _ = Task.Run(endpoint.ServeAsync);
        return endpoint;
    }

    private async Task ServeAsync()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try { context = await _listener.GetContextAsync(); }
            catch (Exception ex) when (ex is HttpListenerException or ObjectDisposedException or InvalidOperationException) { return; }
            _ = Task.Run(() => Answer(context));
        }
    }

    private void Answer(HttpListenerContext context)
    {
        try
        {
            var (status, body) = Respond(context.Request.HttpMethod, context.Request.Url?.AbsolutePath ?? "");
            var bytes = Encoding.UTF8.GetBytes(body);
            context.Response.StatusCode = status;
            context.Response.ContentType = "application/json";
            context.Response.ContentLength64 = bytes.Length;
            context.Response.OutputStream.Write(bytes);
            context.Response.Close();
        }
        catch (Exception ex) when (ex is HttpListenerException or IOException or ObjectDisposedException or InvalidOperationException)
        {
            _log.Debug("management request dropped: {0}", ex.Message);
        }
    }

    /// <summary>Status code and JSON body for a request (pure over the cluster's state).</summary>
    public (int Status, string Body) Respond(string method, string path)
    {
        if (!string.Equals(method, "GET", StringComparison.OrdinalIgnoreCase))
            return (405, "{\"error\":\"only GET is served\"}");
        var cluster = Cluster.Get(_system);
        switch (path.TrimEnd('/'))
        {
            case "/alive":
                return (200, "{\"alive\":true}");
            case "/ready":
            {
                var status = cluster.SelfMember.Status;
                bool ready = IsReady(status);
                return (ready ? 200 : 503, $"{{\"ready\":{(ready ? "true" : "false")},\"member\":\"{status}\"}}");
            }
            case "/bootstrap/seed-nodes" when _bootstrap:
            {
                var self = cluster.SelfMember;
                // Not (or no longer) a member: no seed nodes to offer.
                if (self.Status is MemberStatus.Down or MemberStatus.Exiting or MemberStatus.Leaving or MemberStatus.Removed)
                    return (200, JsonConvert.SerializeObject(new SeedNodes(self.UniqueAddress.Address, ImmutableList<ClusterMember>.Empty)));
                var state = cluster.State;
                var members = state.Members
                    .Where(m => !state.Unreachable.Contains(m) && m.Status is MemberStatus.Up or MemberStatus.WeaklyUp or MemberStatus.Joining)
                    .Select(m => new ClusterMember(m.UniqueAddress.Address, m.UniqueAddress.Uid, m.Status, m.Roles))
                    .ToImmutableList();
                return (200, JsonConvert.SerializeObject(new SeedNodes(self.UniqueAddress.Address, members)));
            }
            default:
                return (404, "{\"error\":\"not found\"}");
        }
    }

    /// <summary>What <c>/ready</c> answers for a member status: ready only when Up.</summary>
    public static bool IsReady(MemberStatus status) => status == MemberStatus.Up;

    public void Dispose()
    {
        try { _listener.Close(); }
        catch (ObjectDisposedException) { }
    }
}
