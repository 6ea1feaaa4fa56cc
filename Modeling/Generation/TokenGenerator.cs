using ShardPipe.Modeling.Core;
using System.Diagnostics;
using System.Text.Json.Nodes;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Generation;

/// <summary>The subset of HF's GenerationConfig that greedy decoding uses.</summary>
public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 20;
    /// <summary>Keep generating past EOS (benchmarks).</summary>
    public bool IgnoreEos { get; init; }
    public long[]? EosTokenIds { get; init; }
    public long? PadTokenId { get; init; }
    /// <summary>Sample instead of taking the argmax (HF's do_sample), with these warpers and seed.</summary>
    public bool DoSample { get; init; }
    public double Temperature { get; init; } = 1.0;
    public int TopK { get; init; }
    public double TopP { get; init; } = 1.0;
    public long Seed { get; init; }
    /// <summary>HF's repetition_penalty (1.0 = off); applies to greedy decoding too.</summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>Called after each step with the new token of every row.</summary>
    public Action<long[]>? OnToken { get; init; }
}

/// <summary>Result of a generation: full sequences (prompt + new tokens) and timings.</summary>
public sealed record GenerationResult(long[][] Sequences, int NewTokens, double PrefillSeconds, double DecodeSeconds)
{
    /// <summary>Decode throughput: new tokens after the first, over decode wall time.</summary>
    public double TokensPerSecond => NewTokens > 1 && DecodeSeconds > 0 ? (NewTokens - 1) / DecodeSeconds : 0;
}

/// <summary>
/// Decoding with a KV cache, as HF's <c>generate</c> (greedy, or sampled with <see cref="GenerationOptions.DoSample"/>): positions from the attention
/// mask (<c>cumsum(mask) − 1</c>, padded slots 1), finished rows continue with the pad token, stop when every
/// row has produced EOS or <c>max_new_tokens</c> is reached.
/// </summary>
public static class TokenGenerator
{
    public static GenerationResult Greedy(CausalLMModel model, long[][] inputIds, long[][]? attentionMask, GenerationOptions options)
    {
        var stop = StopTokens.From(model.GenerationConfig, options.EosTokenIds, options.PadTokenId);
        int batch = inputIds.Length;
        int promptLen = inputIds[0].Length;
        if (inputIds.Any(r => r.Length != promptLen)) throw new InvalidInputException("every row of input_ids must have the same length (left-pad them)");
        var sequences = inputIds.Select(r => r.ToList()).ToArray();
        var mask = attentionMask ?? DecodeRule.FullMask(inputIds);
        var positions = DecodeRule.PositionsFromMask(mask);
        var finished = new bool[batch];
        using var cache = new KvCache();
        using var sampler = new Sampler(!options.DoSample, options.Temperature, options.TopK, options.TopP, options.Seed, options.RepetitionPenalty);
        var sw = Stopwatch.StartNew();
        double prefill = 0;
        int produced = 0;
        long[][] ids = inputIds;
        while (!DecodeRule.Done(produced, options.MaxNewTokens, finished))
        {
            using var scope = NewDisposeScope();
            var logits = model.Forward(IdRows.ToTensor(ids), IdRows.ToTensor(mask), IdRows.ToTensor(positions), cache, lastOnly: true); // (B, 1, V)
            var next = sampler.Next(logits.select(1, 0), sequences);
            finished = DecodeRule.Settle(next, finished, stop, options.IgnoreEos);
            for (int b = 0; b < batch; b++) sequences[b].Add(next[b]);
            produced++;
            options.OnToken?.Invoke(next);
            if (produced == 1) prefill = sw.Elapsed.TotalSeconds;
            (mask, positions) = DecodeRule.Advance(mask);
            ids = next.Select(t => new[] { t }).ToArray();
        }
        double total = sw.Elapsed.TotalSeconds;
        return new GenerationResult(sequences.Select(s => s.ToArray()).ToArray(), produced, prefill, total - prefill);
    }
}
