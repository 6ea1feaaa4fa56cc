using System.Net;
using System.Net.Sockets;

namespace ShardPipe.Actors.Hosting;

/// <summary>Loopback helpers for local multi-process clusters (scripts, tests, benchmarks).</summary>
public static class Loopback
{
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
