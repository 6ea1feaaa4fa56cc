using System.Net;
using System.Net.Sockets;

namespace ShardPipe.Actors.Hosting;

/// <summary>Loopback helpers for local multi-process clusters (scripts, tests, benchmarks).</summary>
public static class Loopback
{
    private static readonly HashSet<int> HandedOut = new();

    /// <summary>
    /// A TCP port free on 127.0.0.1 for a process started a moment later: below Linux's ephemeral range (32768+), so
    /// no socket bound to port 0 meanwhile (another test's ActorSystem, say) can take it, and never the same twice in
    /// this process. Falls back to <see cref="FreePort"/> when none is found.
    /// </summary>
    public static int ReservedPort()
    {
        for (int attempt = 0; attempt < 200; attempt++)
        {
            int port = Random.Shared.Next(20000, 32000);
            lock (HandedOut)
                if (!HandedOut.Add(port)) continue;
            try
            {
                var listener = new TcpListener(IPAddress.Loopback, port);
                listener.Start();
                listener.Stop();
                return port;
            }
            catch (SocketException) { }
        }
        return FreePort();
    }

    /// <summary>A TCP port free on 127.0.0.1 right now (the OS picks it).</summary>
    public static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }
}
