using System.CommandLine;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;

namespace ShardPipe.Host.Cli;

/// <summary><c>--speculate</c>, <c>--num-speculative-tokens</c> and <c>--draft-model</c>, shared by generate, serve and bench.</summary>
public sealed class SpeculationOptions
{
    public Option<string?> Method { get; } = new("--speculate") { Description = "Speculative decoding: \"ngram\" proposes the continuation of the context's last n-gram's earlier occurrence (prompt lookup), \"draft\" a small model's greedy tokens (--draft-model, which implies it); the target verifies the proposals in one pass" };
    public Option<int> Tokens { get; } = new("--num-speculative-tokens") { Description = "Draft tokens proposed per step with --speculate", DefaultValueFactory = _ => 4 };
    public Option<string?> DraftModel { get; } = new("--draft-model") { Description = "A small model with the target's vocabulary and tokenizer proposing the drafts greedily (a folder or cached repo id; on a cluster it runs on the first stage's node, at the same path)" };

    public void AddTo(Command cmd)
    {
        cmd.Add(Method);
        cmd.Add(Tokens);
        cmd.Add(DraftModel);
    }

    /// <summary>
    /// The settings given, checked (null: no speculation), for a request of <paramref name="rows"/> rows. A draft model
    /// is located and, where the target's folder is known here (<paramref name="targetFolder"/>), checked against it
    /// (vocabulary and tokenizer) before anything is loaded.
    /// </summary>
    public SpeculationSettings? Read(ParseResult parse, int rows = 1, string? targetFolder = null)
    {
        string? draft = parse.GetValue(DraftModel);
        string? method = parse.GetValue(Method) ?? (draft is not null ? Speculation.Draft : null);
        if (method is null)
        {
            if (parse.GetResult(Tokens) is { Implicit: false }) throw new InvalidInputException("--num-speculative-tokens needs --speculate or --draft-model");
            return null;
        }
        if (method == Speculation.Draft && draft is null) throw new InvalidInputException("--speculate draft needs --draft-model");
        if (draft is not null && method != Speculation.Draft) throw new InvalidInputException($"--draft-model goes with --speculate draft (or alone), not --speculate {method}");
        Speculation.Validate(method, parse.GetValue(Tokens), rows, draft);
        if (draft is not null)
        {
            draft = Path.GetFullPath(ModelLocator.Locate(draft));
            if (targetFolder is not null) DraftModelCheck.Validate(targetFolder, draft);
        }
        return new SpeculationSettings(method, parse.GetValue(Tokens), draft);
    }

    /// <summary>The target's folder on this machine, or null where it is not here (a cluster's nodes may hold it alone).</summary>
    public static string? LocalFolder(string model, LocateOptions? options = null)
    {
        try { return ModelLocator.Locate(model, options); }
        catch (CheckpointNotFoundException) { return null; }
    }
}
