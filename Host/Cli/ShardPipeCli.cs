using System.CommandLine;
using ShardPipe.Host.Bench;
using ShardPipe.Host.Commands;

namespace ShardPipe.Host.Cli;

/// <summary>The <c>shardpipe</c> command tree.</summary>
public static class ShardPipeCli
{
    public static RootCommand Build()
    {
        var root = new RootCommand("ShardPipe: load and run Hugging Face checkpoints split across devices and machines.");
        root.Options.Add(CommonOptions.Verbose);
        root.Options.Add(CommonOptions.ClientConfig);
        root.Subcommands.Add(InspectCommand.Create());
        root.Subcommands.Add(ForwardCommand.Create());
        root.Subcommands.Add(GenerateCommand.Create());
        root.Subcommands.Add(SaveCommand.Create());
        root.Subcommands.Add(TokenizeCommand.Create());
        root.Subcommands.Add(PlanCommand.Create());
        root.Subcommands.Add(NodeCommand.Create());
        root.Subcommands.Add(CertCommand.Create());
        root.Subcommands.Add(LoadCommand.Create());
        root.Subcommands.Add(StatusCommand.Create());
        root.Subcommands.Add(UnloadCommand.Create());
        root.Subcommands.Add(DrainCommand.Create());
        root.Subcommands.Add(RebalanceCommand.Create());
        root.Subcommands.Add(SynthCommand.Create());
        root.Subcommands.Add(DemoCommand.Create());
        root.Subcommands.Add(ShardPipe.Host.Serving.ServeCommand.Create());
        root.Subcommands.Add(BenchCommand.Create());
        return root;
    }

    public static Task<int> RunAsync(string[] args) => Build().Parse(args).InvokeAsync();
}

/// <summary>Options shared by several commands.</summary>
public static class CommonOptions
{
    public static readonly Option<bool> Verbose = new("--verbose") { Description = "Show stack traces and debug logs", Recursive = true };

    /// <summary>A client's own HOCON (its <c>shardpipe.tls</c> certificate, <c>shardpipe.client</c> settings) for a HOST:PORT cluster.</summary>
    public static readonly Option<string?> ClientConfig = new("--client-config")
    {
        Description = "HOCON file with this client's settings for a HOST:PORT cluster: shardpipe.tls (its certificate, the cluster's CA) and shardpipe.client",
        Recursive = true,
    };

    public static Option<string> Model() => new("--model") { Description = "Model folder or Hugging Face repo id (read from the local HF cache)", Required = true };
    public static Option<string?> Variant() => new("--variant") { Description = "Weights variant, e.g. fp16 (model.fp16.safetensors)" };
    public static Option<string?> Revision() => new("--revision") { Description = "Branch, tag or commit of a repo id in the HF cache (default main)" };
    public static Option<string?> Subfolder() => new("--subfolder") { Description = "Subfolder of the model folder or repo" };
    public static Option<bool> Json() => new("--json") { Description = "Print exactly one JSON object on stdout" };
    public static Option<string?> Quantize() => new("--quantize") { Description = "Quantize on load: int8 or int4 (round-to-nearest, symmetric; every Linear but the head)" };
    public static Option<bool> QuantizeHead() => new("--quantize-head") { Description = "With --quantize, the output head too when it is not tied to the embeddings (llama.cpp's habit)" };
    public static Option<int> QuantizeGroupSize() => new("--quantize-group-size") { Description = "Inputs per scale group for --quantize (default 128; -1 = per output channel)", DefaultValueFactory = _ => 128 };
}
