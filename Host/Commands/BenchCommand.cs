using System.CommandLine;
using ShardPipe.Host.Bench;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe bench NAME</c>: benchmarks that measure ours beside an in-run baseline and end with one JSON line.</summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var cmd = new Command("bench", "Benchmarks: each prints its figures beside a baseline measured in the same run");
        cmd.Subcommands.Add(ReadBench.Create());
        cmd.Subcommands.Add(LoadBench.Create());
        cmd.Subcommands.Add(DecodeBench.Create());
        cmd.Subcommands.Add(DistributedLoadBench.Create());
        cmd.Subcommands.Add(DistributedBench.Create());
        cmd.Subcommands.Add(MessagesBench.Create());
        cmd.Subcommands.Add(OffloadBench.Create());
        cmd.Subcommands.Add(RecoveryBench.Create());
        cmd.Subcommands.Add(ServeBench.Create());
        cmd.Subcommands.Add(TokenizerLoadBench.Create());
        cmd.Subcommands.Add(VsLlamaCppBench.Create());
        cmd.Subcommands.Add(QuantKernelBench.Create());
        cmd.Subcommands.Add(ReadBandwidth.Create());
        return cmd;
    }
}
