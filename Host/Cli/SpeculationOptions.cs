using System.CommandLine;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;

namespace ShardPipe.Host.Cli;

/// <summary><c>--speculate</c>, <c>--num-speculative-tokens</c> and <c>--draft-model</c>, shared by generate, serve and bench.</summary>
public sealed class SpeculationOptions
{
    public Option<string?> Method { get; } = new("--speculate") { Description = "Speculative decoding: \"ngram\" proposes the continuation of the context's last n-gram's earlier occurrence (prompt lookup); the target verifies the proposals in one pass" };
    public Option<int> Tokens { get; } = new("--num-speculative-tokens") { Description = "Draft tokens proposed per step with --speculate", DefaultValueFactory = _ => 4 };
    public Option<string?> DraftModel { get; } = new("--draft-model") { Description = "A small model proposing the drafts (not built yet: refused)" };

    public void AddTo(Command cmd)
    {
        cmd.Add(Method);
        cmd.Add(Tokens);
        cmd.Add(DraftModel);
    }

    /// <summary>The settings given, checked (null: no speculation), for a request of <paramref name="rows"/> rows.</summary>
    public SpeculationSettings? Read(ParseResult parse, int rows = 1)
    {
        if (parse.GetValue(DraftModel) is not null)
            throw new UnsupportedException("--draft-model: speculative decoding with a draft model is not built yet; use --speculate ngram");
        if (parse.GetValue(Method) is not { } method)
        {
            if (parse.GetResult(Tokens) is { Implicit: false }) throw new InvalidInputException("--num-speculative-tokens needs --speculate");
            return null;
        }
        Speculation.Validate(method, parse.GetValue(Tokens), rows);
        return new SpeculationSettings(method, parse.GetValue(Tokens));
    }
}
