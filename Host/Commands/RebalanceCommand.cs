using System.CommandLine;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Commands;

/// <summary>
/// <c>shardpipe rebalance --cluster C</c>: the served model's strategy is planned again over every node (a node that
/// joined gets its share) and what must move moves live, as a drain's layers do.
/// </summary>
public static class RebalanceCommand
{
    public static Command Create()
    {
        var cluster = new Option<string>("--cluster") { Description = "HOST:PORT (or several, comma-separated) of a running cluster", Required = true };
        var timeout = new Option<int>("--timeout") { Description = "Seconds to wait for the new epoch to serve", DefaultValueFactory = _ => 600 };
        var json = CommonOptions.Json();
        var cmd = new Command("rebalance", "Re-plan the served model over every node and move what must move, live") { cluster, timeout, json };
        CommandAction.Set(cmd, async (parse, log) =>
        {
            int seconds = parse.GetValue(timeout);
            if (seconds < 1) throw new InvalidInputException($"--timeout must be at least 1 second, not {seconds}");
            await using var session = await ClusterSession.ConnectAsync(parse.GetValue(cluster)!, null, log, clientConfig: parse.GetValue(CommonOptions.ClientConfig));
            var span = TimeSpan.FromSeconds(seconds);
            var moved = await MoveReport.Await(session.Client.RebalanceAsync(span), "rebalance", span);
            MoveReport.Print("rebalanced", moved, parse.GetValue(json));
            return 0;
        });
        return cmd;
    }
}
