using System.CommandLine;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Commands;

/// <summary>
/// <c>shardpipe demo</c>: the zero-setup main job. Generates a small sharded Llama checkpoint and runs the
/// pipeline on it; today that pipeline is checkpoint inspection, and it grows as the cluster path lands.
/// </summary>
public static class DemoCommand
{
    public static Command Create()
    {
        var dir = new Option<string?>("--dir") { Description = "Where to generate the demo checkpoint (default: a temp folder)" };
        var json = CommonOptions.Json();
        var cmd = new Command("demo", "Generate a small sharded Llama checkpoint and inspect it (no setup needed)") { dir, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            string folder = parse.GetValue(dir) ?? Path.Combine(Path.GetTempPath(), "shardpipe-demo");
            var files = SyntheticLlama.Write(folder, new SyntheticLlamaSpec { MaxShardSize = "200KB" });
            log.LogInformation("generated {Count} files in {Folder}", files.Count, folder);
            var result = InspectCommand.Describe(folder, null, withTensors: false);
            if (parse.GetValue(json)) JsonOut.Print(result);
            else
            {
                Console.WriteLine($"Generated checkpoint in {folder}");
                Console.WriteLine($"  {result["architecture"]}, {result["num_tensors"]} tensors, {ByteSize.Format((long)result["total_bytes"]!)} in {((System.Text.Json.Nodes.JsonArray)result["shards"]!).Count} shards");
                Console.WriteLine($"Inspect it with: shardpipe inspect --model {folder} --tensors");
            }
            return 0;
        });
        return cmd;
    }
}
