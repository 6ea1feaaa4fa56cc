using System.Diagnostics;
using Akka.Configuration;
using ShardPipe.Actors.Security;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>
/// Secure by default, through the real <c>shardpipe</c> process: <c>shardpipe cert</c> makes a CA and certificates a
/// node trusts, a node without TLS refuses to start unless told <c>--insecure</c>, and an insecure node says in words
/// what that means.
/// </summary>
public class NodeSecurityCliTests
{
    private static Dictionary<string, string> Env(string password) => new() { ["SHARDPIPE_TLS_PASSWORD"] = password };

    [Fact]
    public void Cert_commands_make_a_ca_and_certificates_that_the_trust_rule_accepts()
    {
        using var tmp = new TempDir();
        var env = Env("pw-" + Guid.NewGuid().ToString("N")[..8]);
        var ca = ShardPipeProcess.Run(env, "cert", "create-ca", "--dir", tmp.Path);
        Assert.True(ca.ExitCode == 0, ca.Stderr);
        var node = ShardPipeProcess.Run(env, "cert", "create-node", "node-1", "--dir", tmp.Path, "--host", "10.0.0.7", "--host", "db.example");
        Assert.True(node.ExitCode == 0, node.Stderr);
        var client = ShardPipeProcess.Run(env, "cert", "create-client", "client", "--dir", tmp.Path);
        Assert.True(client.ExitCode == 0, client.Stderr);
        Assert.Equal(tmp.File("node-1.p12"), node.Stdout.Trim());

        Environment.SetEnvironmentVariable("SHARDPIPE_CLI_CERT_PW", env["SHARDPIPE_TLS_PASSWORD"]);
        var tls = ClusterTls.From(ConfigurationFactory.ParseString(CertificateAuthority.TlsHocon(tmp.Path, "node-1", "SHARDPIPE_CLI_CERT_PW")))!;
        var clientTls = ClusterTls.From(ConfigurationFactory.ParseString(CertificateAuthority.TlsHocon(tmp.Path, "client", "SHARDPIPE_CLI_CERT_PW")))!;
        Assert.Null(tls.Refusal(clientTls.Certificate));
        Assert.Null(clientTls.Refusal(tls.Certificate));

        // No password, an existing CA, a name that is a path: exit 2, one line naming what is wrong.
        var noPassword = ShardPipeProcess.Run(new Dictionary<string, string> { ["SHARDPIPE_TLS_PASSWORD"] = "" }, "cert", "create-node", "node-2", "--dir", tmp.Path);
        Assert.Equal(2, noPassword.ExitCode);
        Assert.Contains("SHARDPIPE_TLS_PASSWORD is not set", noPassword.Stderr);
        var again = ShardPipeProcess.Run(env, "cert", "create-ca", "--dir", tmp.Path);
        Assert.Equal(2, again.ExitCode);
        Assert.Contains("a CA is there already", again.Stderr);
        var path = ShardPipeProcess.Run(env, "cert", "create-node", "../x", "--dir", tmp.Path);
        Assert.Equal(2, path.ExitCode);
        Assert.Contains("'../x'", path.Stderr);
    }

    [Fact]
    public void A_node_without_tls_refuses_to_start_unless_told_insecure()
    {
        using var tmp = new TempDir();
        int port = ShardPipe.Actors.Hosting.Loopback.ReservedPort();
        string conf = tmp.File("node.conf");
        File.WriteAllText(conf, $"akka.remote.dot-netty.tcp {{ hostname = 127.0.0.1, port = {port} }}\nakka.cluster.seed-nodes = [\"akka.tcp://shardpipe@127.0.0.1:{port}\"]\nshardpipe.devices = [ {{ device = cpu, budget = \"64MiB\" }} ]");
        var refused = ShardPipeProcess.Run("node", "--config", conf);
        Assert.Equal(2, refused.ExitCode);
        string last = refused.LastMessageLine;
        Assert.StartsWith($"error: {conf}: shardpipe.tls has no certificate", last);
        Assert.Contains("--insecure", last);

        // --insecure: it starts, and its log says what anyone on the network can do to it.
        Assert.Contains(NodeTransportRule.InsecureWarning[..40], StartUntilLogged(conf, "INSECURE", "--insecure"));
        // shardpipe.insecure = on in the config does the same.
        File.AppendAllText(conf, "\nshardpipe.insecure = on");
        Assert.Contains("Anyone who can reach its ports", StartUntilLogged(conf, "INSECURE"));
    }

    /// <summary>Starts <c>shardpipe node</c> and returns its output up to the first line containing <paramref name="marker"/>, then kills it.</summary>
    private static string StartUntilLogged(string conf, string marker, params string[] extra)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "shardpipe.dll"));
        foreach (var a in new[] { "node", "--config", conf }.Concat(extra)) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var seen = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var all = new System.Text.StringBuilder();
        void OnLine(string? line)
        {
            if (line is null) return;
            lock (all) all.AppendLine(line);
            if (line.Contains(marker)) lock (all) seen.TrySetResult(all.ToString());
        }
        p.OutputDataReceived += (_, e) => OnLine(e.Data);
        p.ErrorDataReceived += (_, e) => OnLine(e.Data);
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        try
        {
            var exited = p.WaitForExitAsync();
            var first = Task.WhenAny(seen.Task, exited, Task.Delay(TimeSpan.FromSeconds(60))).Result;
            if (first != seen.Task) throw new Xunit.Sdk.XunitException($"no '{marker}' line (exited: {p.HasExited}):\n{all}");
            return seen.Task.Result;
        }
        finally { if (!p.HasExited) p.Kill(entireProcessTree: true); p.WaitForExit(10_000); }
    }
}
