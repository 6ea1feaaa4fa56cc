using System.Diagnostics;
using ShardPipe.Actors.Hosting;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe node</c> processes on loopback for fault benchmarks and tests: every node may hold the coordinator,
/// every node is a seed. A node can be killed (SIGKILL), paused (SIGSTOP) and resumed (SIGCONT), or started again.
/// Everything started is killed on dispose. With <c>secure</c> every node runs mutual TLS with its own certificate from
/// a throwaway CA (<see cref="ClientConfig"/> is then what a client needs); otherwise the nodes run
/// <c>shardpipe.insecure = on</c> — on loopback, for tests and benchmarks whose subject is not security.
/// </summary>
public sealed class NodeProcesses : IDisposable
{
    private readonly string _dir;
    private readonly int[] _ports;
    private readonly Func<int, string> _extra;
    private readonly Process?[] _processes;
    private readonly BenchCertificates? _certs;
    private readonly bool _seedNodes;

    /// <param name="extra">HOCON appended to node i's config (1-based).</param>
    /// <param name="secure">Mutual TLS with certificates made for node-1…node-N and "client".</param>
    /// <param name="seedNodes">Off: the configs name no seed nodes (the nodes find each other by shardpipe.discovery in <paramref name="extra"/>).</param>
    public NodeProcesses(int count, Func<int, string>? extra = null, bool secure = false, bool seedNodes = true)
    {
        _seedNodes = seedNodes;
        if (secure) _certs = new BenchCertificates([.. Enumerable.Range(1, count).Select(i => $"node-{i}"), "client"]);
        _dir = Path.Combine(Path.GetTempPath(), "shardpipe-nodes-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(_dir);
        _ports = Enumerable.Range(0, count).Select(_ => Loopback.ReservedPort()).ToArray();
        _extra = extra ?? (_ => "");
        _processes = new Process?[count];
        for (int i = 1; i <= count; i++) Start(i);
    }

    /// <summary>Every node as a contact point: <c>127.0.0.1:P1,127.0.0.1:P2,…</c>.</summary>
    public string Contacts => string.Join(",", _ports.Select(p => $"127.0.0.1:{p}"));

    public int Count => _ports.Length;

    /// <summary>The client's own config: its TLS certificate when the nodes are secure, else empty.</summary>
    public Akka.Configuration.Config ClientConfig => _certs is null ? Akka.Configuration.Config.Empty
        : Akka.Configuration.ConfigurationFactory.ParseString(_certs.HoconFor("client"));

    /// <summary>The certificates' folder (secure nodes only): ca.crt, ca.p12, node-i.p12, client.p12.</summary>
    public string? CertificateDirectory => _certs?.Directory;

    public Process this[int node] => _processes[node - 1] ?? throw new InvalidOperationException($"node-{node} is not running");

    /// <summary>Starts node <paramref name="node"/> (1-based), again if it was killed: a fresh node on the same port.</summary>
    public void Start(int node)
    {
        string seeds = string.Join(", ", _ports.Select(p => $"\"akka.tcp://shardpipe@127.0.0.1:{p}\""));
        string conf = Path.Combine(_dir, $"node-{node}.conf");
        File.WriteAllText(conf, $@"
akka.remote.dot-netty.tcp {{ hostname = 127.0.0.1, port = {_ports[node - 1]} }}
akka.cluster {{ roles = [coordinator, worker]{(_seedNodes ? $", seed-nodes = [{seeds}]" : "")} }}
shardpipe.node-name = ""node-{node}""
{(_certs is null ? "shardpipe.insecure = on" : _certs.HoconFor($"node-{node}"))}
{_extra(node)}");
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "shardpipe.dll"));
        foreach (var a in new[] { "node", "--config", conf }) psi.ArgumentList.Add(a);
        var log = File.AppendText(Path.Combine(_dir, $"node-{node}.log"));
        log.AutoFlush = true;
        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        _processes[node - 1] = p;
    }

    /// <summary>SIGKILL: the process dies at once, with no chance to leave the cluster.</summary>
    public void Kill(int node)
    {
        var p = this[node];
        p.Kill();
        p.WaitForExit(10_000);
        _processes[node - 1] = null;
    }

    /// <summary>Waits for node <paramref name="node"/>'s process to end by itself (a drained node leaves): its exit code, or null if it still runs after <paramref name="timeout"/>.</summary>
    public int? WaitForExit(int node, TimeSpan timeout)
    {
        var p = this[node];
        if (!p.WaitForExit(timeout)) return null;
        p.WaitForExit(); // the output readers drained too
        _processes[node - 1] = null;
        return p.ExitCode;
    }

    /// <summary>A file holding <see cref="ClientConfig"/> as HOCON, for a <c>shardpipe</c> command's <c>--client-config</c>.</summary>
    public string ClientConfigFile
    {
        get
        {
            string path = Path.Combine(_dir, "client.conf");
            if (!File.Exists(path)) File.WriteAllText(path, _certs?.HoconFor("client") ?? "");
            return path;
        }
    }

    /// <summary>SIGSTOP / SIGCONT: the process is frozen (no heartbeats, no steps) and later resumed.</summary>
    public void Pause(int node) => Signal(node, "STOP");
    public void Resume(int node) => Signal(node, "CONT");

    private void Signal(int node, string signal)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", $"-{signal} {this[node].Id}") { UseShellExecute = false })!;
        kill.WaitForExit();
    }

    /// <summary>The last lines of a node's log (for a failure message).</summary>
    public string Tail(int node, int lines = 20)
    {
        string path = Path.Combine(_dir, $"node-{node}.log");
        return File.Exists(path) ? string.Join("\n", File.ReadLines(path).TakeLast(lines)) : "";
    }

    /// <summary>Every line of a node's log so far (stdout and stderr; a killed node's too).</summary>
    public IReadOnlyList<string> Log(int node)
    {
        string path = Path.Combine(_dir, $"node-{node}.log");
        if (!File.Exists(path)) return Array.Empty<string>();
        using var reader = new StreamReader(new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite));
        var lines = new List<string>();
        while (reader.ReadLine() is { } line) lines.Add(line);
        return lines;
    }

    public void Dispose()
    {
        for (int i = 0; i < _processes.Length; i++)
        {
            var p = _processes[i];
            if (p is null) continue;
            try
            {
                if (!p.HasExited)
                {
                    Signal(i + 1, "CONT");
                    p.Kill(entireProcessTree: true);
                }
                p.WaitForExit(10_000);
            }
            catch (InvalidOperationException) { }
        }
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
        _certs?.Dispose();
    }
}
