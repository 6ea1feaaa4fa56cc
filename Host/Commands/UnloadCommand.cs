using System.CommandLine;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe unload</c>: every worker of a running cluster frees its slice.</summary>
public static class UnloadCommand
{
    public static Command Create()
    {
        var cluster = new Option<string>("--cluster") { Description = "HOST:PORT of a running cluster", Required = true };
        var cmd = new Command("unload", "Unload the cluster's model: every worker frees its slice") { cluster };
        CommandAction.Set(cmd, async (parse, log) =>
        {
            await using var session = await ClusterSession.ConnectAsync(parse.GetValue(cluster)!, null, log, clientConfig: parse.GetValue(CommonOptions.ClientConfig));
            await session.Client.UnloadAsync(TimeSpan.FromSeconds(60));
            var s = await session.Client.StatusAsync(TimeSpan.FromSeconds(30));
            Tables.Line($"state {s.StateName}");
            return 0;
        });
        return cmd;
    }
}
