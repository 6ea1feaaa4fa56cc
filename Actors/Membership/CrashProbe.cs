using System.Net.Sockets;

namespace ShardPipe.Actors.Membership;

/// <summary>What one TCP connect to a member's remoting port found.</summary>
public enum ProbeResult
{
    /// <summary>The connect was refused: nothing listens there (the process is gone; its OS closed its sockets).</summary>
    Refused,
    /// <summary>The connect completed: something listens (a paused process's kernel still completes the handshake).</summary>
    Accepted,
    /// <summary>No answer within the timeout (a cut or blackholed link, or a full backlog).</summary>
    TimedOut,
    /// <summary>Any other error (no route, a name that does not resolve, …): not evidence of a crash.</summary>
    Failed,
}

/// <summary>
/// Fast crash detection that cannot misfire on a pause or a partition. A SIGKILLed process's sockets are closed by its
/// OS: the peers' associations to it end at once, and a TCP connect to its remoting port is then <em>refused</em>. A
/// paused process still accepts connects (its kernel completes the handshake) and a cut-off one times out; neither is
/// refused. So a member whose port refuses every try is gone, and is downed at once — under the same majority rule as
/// <see cref="CoordinatorFailover"/>, by one node (the oldest reachable member), though a second Down would do no harm.
/// </summary>
public static class CrashProbe
{
    /// <summary>Connects per probe, the pause between them, and the most one connect may take.</summary>
    public const int Tries = 2;
    public static readonly TimeSpan Interval = TimeSpan.FromMilliseconds(150);
    public static readonly TimeSpan ConnectTimeout = TimeSpan.FromMilliseconds(500);

    /// <summary>How long after a probe that found the port listening it is probed once more (<see cref="ProbeAgain"/>).</summary>
    public static readonly TimeSpan AgainAfter = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Whether a member is probed once more, <see cref="AgainAfter"/> later: its association ended but its port still
    /// accepted a connect, and this probe was not already the second. A process on its way out closes its connections
    /// before its listening socket (an ActorSystem terminating: its remoting drops the associations, then the listener),
    /// so the first probe can find the port open; the second finds it refused and the member is downed within about a
    /// second instead of after the failure detector's seconds. A paused or healthy process accepts both: nothing happens.
    /// </summary>
    public static bool ProbeAgain(IReadOnlyCollection<ProbeResult> probes, bool second) => !second && probes.Contains(ProbeResult.Accepted);

    /// <summary>
    /// The member this node should down now, or null: <paramref name="suspect"/> when it is a counted member other than
    /// this node, every probe of it was refused, the members reachable here other than it are a strict majority of all
    /// counted members, and this node is the oldest of them (one node decides).
    /// </summary>
    public static string? NodeToDown(IReadOnlyList<MemberView> oldestFirst, string self, string suspect, IReadOnlyCollection<ProbeResult> probes)
    {
        if (suspect == self || probes.Count == 0 || probes.Any(p => p != ProbeResult.Refused)) return null;
        if (!oldestFirst.Any(m => m.Address == suspect)) return null; // not a counted member (joining, leaving, gone)
        var alive = oldestFirst.Where(m => m.Address != suspect && m.Reachable).ToList();
        if (2 * alive.Count <= oldestFirst.Count) return null; // no strict majority here, counting the suspect as lost
        return alive[0].Address == self ? suspect : null;
    }

    /// <summary>One plain TCP connect (no TLS handshake), closed at once, classified.</summary>
    public static async Task<ProbeResult> ConnectOnce(string host, int port, TimeSpan timeout)
    {
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await socket.ConnectAsync(host, port, cts.Token).ConfigureAwait(false);
            return ProbeResult.Accepted;
        }
        catch (OperationCanceledException) { return ProbeResult.TimedOut; }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused) { return ProbeResult.Refused; }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut) { return ProbeResult.TimedOut; }
        catch (SocketException) { return ProbeResult.Failed; }
    }

    /// <summary>The probe every caller runs: <see cref="Tries"/> connects <see cref="Interval"/> apart, each at most <see cref="ConnectTimeout"/>.</summary>
    public static Task<IReadOnlyList<ProbeResult>> Probe(string host, int port) => Probe(host, port, Tries, Interval, ConnectTimeout);

    /// <summary><paramref name="tries"/> connects <paramref name="interval"/> apart; stops at the first that is not refused.</summary>
    public static async Task<IReadOnlyList<ProbeResult>> Probe(string host, int port, int tries, TimeSpan interval, TimeSpan timeout)
    {
        var results = new List<ProbeResult>();
        for (int i = 0; i < tries; i++)
        {
            if (i > 0) await Task.Delay(interval).ConfigureAwait(false);
            results.Add(await ConnectOnce(host, port, timeout).ConfigureAwait(false));
            if (results[^1] != ProbeResult.Refused) break;
        }
        return results;
    }
}
