using System.CommandLine;
using Akka.Configuration;
using Microsoft.Extensions.Logging;
using ShardPipe.Actors.Hosting;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe node --config node.conf</c>: run one cluster node until stopped (Ctrl+C / SIGTERM).</summary>
public static class NodeCommand
{
    public static Command Create()
    {
        var config = new Option<string>("--config") { Description = "HOCON host config (seed nodes, roles, host/port, devices with budgets, checkpoints)", Required = true };
        var join = new Option<string?>("--join") { Description = "Address of a node to join when the config names no seed nodes (akka.tcp://shardpipe@HOST:PORT)" };
        var insecure = new Option<bool>("--insecure") { Description = "Run without TLS (as shardpipe.insecure = on): anyone who reaches the node's ports can read the traffic and stop the cluster" };
        var cmd = new Command("node", "Run a ShardPipe cluster node from a host config (mutual TLS unless --insecure)") { config, join, insecure };
        CommandAction.Set(cmd, async (parse, log) =>
        {
            string path = parse.GetValue(config)!;
            if (!File.Exists(path)) throw new InvalidInputException($"{path}: host config not found");
            Config hocon;
            try { hocon = ConfigurationFactory.ParseString(File.ReadAllText(path)); }
            catch (Exception ex) when (ex is not OutOfMemoryException) { throw new InvalidInputException($"{path}: not valid HOCON ({ex.Message})"); }
            var effective = ShardPipe.Actors.Settings.ReferenceConfig.Over(hocon);
            bool tlsOn;
            try { tlsOn = ShardPipe.Actors.Settings.TlsSettings.From(hocon).Enabled; }
            catch (ConfigurationException ex) { throw new InvalidInputException($"{path}: {ex.Message}"); }
            try { ShardPipe.Actors.Hosting.Discovery.Prepare(effective, parse.GetValue(join), out _); }
            catch (InvalidInputException ex) { throw new InvalidInputException($"{path}: {ex.Message}"); }
            ShardPipe.Actors.Security.NodeTransportRule.RunsInsecure(tlsOn, parse.GetValue(insecure) || effective.GetBoolean("shardpipe.insecure"), path);
            var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.TrySetResult(); };
            AppDomain.CurrentDomain.ProcessExit += (_, _) => stop.TrySetResult();
            while (true)
            {
                var node = ShardPipeNode.Start(hocon, parse.GetValue(join), warnPlaintext: true);
                log.LogInformation("node {Name} up at {Address} (roles {Roles}; devices {Devices})", node.Settings.NodeName, node.Address,
                    string.Join(",", node.Settings.Roles), string.Join(", ", node.Settings.Devices.Select(d => $"{d.Device}={ShardPipe.Checkpoints.ByteSize.Format(d.Budget)}")));
                await Task.WhenAny(stop.Task, node.System.WhenTerminated);
                if (!stop.Task.IsCompleted && ShardPipe.Actors.Security.ClusterTls.StoppedByHandshakeFailure(node.System))
                {
                    // Deliberate: a failed outbound TLS handshake means this node's certificate or CA does not match the
                    // peer it dialled (a seed, a member). Restarting would fail the same way, so the process ends.
                    Console.Error.WriteLine($"error: node {node.Settings.NodeName}: a TLS handshake with a peer failed (see the log above: which certificate was refused, and why); check shardpipe.tls.certificate and shardpipe.tls.ca");
                    return ShardPipe.Actors.Security.ClusterTls.HandshakeFailureExitCode;
                }
                if (!stop.Task.IsCompleted && node.LeftOnRequest)
                {
                    // Drained: the cluster moved this node's layers away and told it to leave. Done, not downed.
                    log.LogInformation("node {Name} left the cluster as asked (drained); exiting", node.Settings.NodeName);
                    break;
                }
                if (!stop.Task.IsCompleted && node.Settings.RestartWhenDowned)
                {
                    // The cluster downed this node (it was unreachable past the decision: a pause, a cut): it cannot
                    // rejoin as it was, so it starts again as a fresh node and joins through its seed nodes.
                    log.LogWarning("node {Name} was removed from the cluster; restarting as a fresh node", node.Settings.NodeName);
                    await Task.WhenAny(stop.Task, Task.Delay(TimeSpan.FromSeconds(1)));
                    if (!stop.Task.IsCompleted) continue;
                }
                try { await node.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(15)); }
                catch (TimeoutException) { log.LogWarning("node {Name} did not shut down within 15 s", node.Settings.NodeName); }
                break;
            }
            return 0;
        });
        return cmd;
    }
}
