using System.CommandLine;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Commands;

/// <summary>
/// <c>shardpipe drain --cluster C NODE</c>: the node's layers move to the others under a new epoch (only what moves is
/// read; requests in flight resume with the same tokens), then the node is told to leave and its process exits 0.
/// </summary>
public static class DrainCommand
{
    public static Command Create()
    {
        var cluster = new Option<string>("--cluster") { Description = "HOST:PORT (or several, comma-separated) of a running cluster", Required = true };
        var timeout = new Option<int>("--timeout") { Description = "Seconds to wait for the new epoch to serve", DefaultValueFactory = _ => 600 };
        var node = new Argument<string>("NODE") { Description = "The node to drain, by name (as status lists it)" };
        var json = CommonOptions.Json();
        var cmd = new Command("drain", "Move a node's layers to the other nodes live, then let it leave the cluster") { cluster, timeout, json, node };
        CommandAction.Set(cmd, async (parse, log) =>
        {
            int seconds = parse.GetValue(timeout);
            if (seconds < 1) throw new InvalidInputException($"--timeout must be at least 1 second, not {seconds}");
            string name = parse.GetValue(node)!;
            await using var session = await ClusterSession.ConnectAsync(parse.GetValue(cluster)!, null, log, clientConfig: parse.GetValue(CommonOptions.ClientConfig));
            var span = TimeSpan.FromSeconds(seconds);
            var moved = await MoveReport.Await(session.Client.DrainAsync(name, span), $"drain of {name}", span);
            MoveReport.Print($"drained {name}", moved, parse.GetValue(json));
            return 0;
        });
        return cmd;
    }
}
