using System.CommandLine;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe synth</c>: write a generated Llama checkpoint (for demos, benchmarks and ops scripts; nothing to download).</summary>
public static class SynthCommand
{
    public static Command Create()
    {
        var outDir = new Option<string>("--out") { Description = "Folder to write", Required = true };
        var preset = new Option<string>("--preset") { Description = "tiny (default), llama-125m (hidden 768, 12 layers, vocab 32000), llama-1g (≈1.2 GiB fp32), mixtral-300m (8 experts, top-2, ≈294M parameters)", DefaultValueFactory = _ => "tiny" };
        var maxShard = new Option<string?>("--max-shard-size") { Description = "Override the preset's shard size" };
        var tie = new Option<bool>("--tie-word-embeddings") { Description = "Tie lm_head to the input embeddings" };
        var cmd = new Command("synth", "Write a generated Llama (or Mixtral) checkpoint with HF's layout") { outDir, preset, maxShard, tie };
        CommandAction.Set(cmd, (parse, log) =>
        {
            var spec = parse.GetValue(preset) switch
            {
                "tiny" => new SyntheticLlamaSpec { MaxShardSize = "200KB" },
                "llama-125m" => SyntheticLlamaSpec.Llama125M,
                "llama-1g" => SyntheticLlamaSpec.Llama1GiB,
                "mixtral-300m" => SyntheticLlamaSpec.Mixtral300M,
                var other => throw new InvalidInputException($"--preset '{other}': use tiny, llama-125m, llama-1g or mixtral-300m"),
            };
            if (parse.GetValue(maxShard) is { } ms) spec = spec with { MaxShardSize = ms };
            if (parse.GetValue(tie)) spec = spec with { TieWordEmbeddings = true };
            var files = SyntheticLlama.Write(parse.GetValue(outDir)!, spec).ToList();
            // A byte-level tokenizer, so that --prompt, serve and OpenAI clients work on the generated model.
            files.Add(ShardPipe.Modeling.Tokenization.ByteLevelTokenizerFile.Write(parse.GetValue(outDir)!, spec.VocabSize));
            log.LogInformation("wrote {Count} files to {Out}", files.Count, parse.GetValue(outDir));
            foreach (var f in files) Console.WriteLine(f);
            return 0;
        });
        return cmd;
    }
}
