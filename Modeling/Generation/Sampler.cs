using ShardPipe.Modeling.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Generation;

/// <summary>
/// Picks the next token from last-position logits as HF's generate does: greedy argmax, or sampling after the
/// logits warpers in HF's order (temperature, top-k, top-p), from a generator seeded per request so that a seed
/// reproduces its tokens.
/// </summary>
public sealed class Sampler : IDisposable
{
    private readonly bool _greedy;
    private readonly double _temperature;
    private readonly int _topK;
    private readonly double _topP;
    private readonly torch.Generator? _generator;
    private readonly double _repetitionPenalty;

    public Sampler(bool greedy, double temperature = 1.0, int topK = 0, double topP = 1.0, long seed = 0, double repetitionPenalty = 1.0)
    {
        if (repetitionPenalty <= 0) throw new InvalidInputException("repetition_penalty must be positive");
        _repetitionPenalty = repetitionPenalty;
        _greedy = IsGreedyRule(greedy, temperature);
        _temperature = temperature;
        _topK = topK;
        _topP = topP;
        Seed = seed;
        if (!_greedy) _generator = new torch.Generator((ulong)seed);
    }

    /// <summary>Whether this sampler takes the argmax (greedy, or temperature 0).</summary>
    public bool IsGreedy => _greedy;

    /// <summary>The request's seed (speculative sampling derives its per-token generators from it).</summary>
    public long Seed { get; }

    /// <summary>Whether <see cref="Next"/> is the plain argmax of the logits (greedy, no repetition penalty): a merged step picks such rows' tokens together (<see cref="ArgmaxRows"/>).</summary>
    public bool Argmax => TakesArgmax(_greedy, _temperature, _repetitionPenalty);

    /// <summary>Whether a sampler of these settings picks the plain argmax (greedy or temperature 0, no repetition penalty).</summary>
    public static bool TakesArgmax(bool greedy, double temperature, double repetitionPenalty) => IsGreedyRule(greedy, temperature) && repetitionPenalty == 1.0;

    /// <summary>The rule behind <see cref="IsGreedy"/>: greedy, or a temperature of 0 or less (no distribution to sample).</summary>
    public static bool IsGreedyRule(bool greedy, double temperature) => greedy || temperature <= 0;

    /// <summary>
    /// Each row's argmax of logits (R, V), for every row of a merged step at once: what <see cref="Next"/> gives a
    /// sampler whose <see cref="Argmax"/> holds, row by row — libtorch's rule exactly (<see cref="ShardPipe.Modeling.Layers.StepKernels.Argmax"/>:
    /// the first maximal index; the first NaN if a row has one). libtorch's argmax over several rows cost more here
    /// than one call per row (its reduction wakes the intra-op threads).
    /// </summary>
    public static long[] ArgmaxRows(Tensor logits)
    {
        if (logits.dim() != 2 || logits.Shape()[1] < 1 || logits.Shape()[1] > int.MaxValue)
            throw new ArgumentException($"logits of shape [{string.Join(", ", logits.Shape())}]: expected (rows, vocab)");
        if (logits.dtype == ScalarType.Float32) return ShardPipe.Modeling.Layers.StepKernels.Argmax(logits);
        using var x = logits.to(ScalarType.Float32);
        return ShardPipe.Modeling.Layers.StepKernels.Argmax(x);
    }

    /// <summary>logits (B, V) → one token per row; <paramref name="history"/> (the ids so far, per row) feeds the repetition penalty.</summary>
    public long[] Next(Tensor logits, IReadOnlyList<IReadOnlyCollection<long>>? history = null)
    {
        using var scope = NewDisposeScope();
        var scores = Penalised(logits, history);
        if (_greedy) return ShardPipe.Modeling.Layers.StepKernels.Argmax(scores); // one vectorised pass per row
        var probs = Warped(scores);
        return torch.multinomial(probs, 1, generator: _generator).squeeze(-1).data<long>().ToArray();
    }

    /// <summary>
    /// The distribution a sampled token is drawn from: logits (B, V) after the repetition penalty and the warpers,
    /// softmaxed (float32, (B, V)). Speculative sampling accepts or rejects draft tokens against it.
    /// </summary>
    public Tensor Distribution(Tensor logits, IReadOnlyList<IReadOnlyCollection<long>>? history = null)
    {
        using var scope = NewDisposeScope();
        var scores = Penalised(logits, history);
        return (_greedy ? nn.functional.one_hot(scores.argmax(-1), scores.Shape()[^1]).to(ScalarType.Float32) : Warped(scores)).MoveToOuterDisposeScope();
    }

    private Tensor Penalised(Tensor logits, IReadOnlyList<IReadOnlyCollection<long>>? history)
    {
        var scores = logits.to(ScalarType.Float32);
        if (_repetitionPenalty != 1.0 && history is not null)
        {
            // HF's RepetitionPenaltyLogitsProcessor: seen tokens' scores are divided by the penalty, or multiplied if negative.
            scores = scores.clone();
            for (int b = 0; b < history.Count; b++)
            {
                var ids = tensor(history[b].Distinct().ToArray());
                if (ids.Shape()[0] == 0) continue;
                var row = scores[b];
                var seen = row.index_select(0, ids);
                row.index_copy_(0, ids, where(seen.lt(0), seen * _repetitionPenalty, seen / _repetitionPenalty));
            }
        }
        return scores;
    }

    private Tensor Warped(Tensor scores)
    {
        if (_temperature != 1.0) scores = scores / _temperature;
        long vocab = scores.Shape()[^1];
        using Scalar minusInfinity = float.NegativeInfinity; // held across the native calls (see AttentionMask.Build)
        if (_topK > 0 && _topK < vocab)
        {
            var kth = scores.topk(_topK, -1).values.narrow(-1, _topK - 1, 1);
            scores = scores.masked_fill(scores.lt(kth), minusInfinity);
        }
        if (_topP < 1.0)
        {
            // HF's TopPLogitsWarper: sort ascending, drop the low tail whose cumulative mass is ≤ 1 − top_p, keep at least one.
            var (sorted, indices) = scores.sort(-1, descending: false);
            var cumulative = nn.functional.softmax(sorted, -1).cumsum(-1);
            var remove = cumulative.le(1 - _topP);
            remove.index_put_(tensor(false), TensorIndex.Ellipsis, TensorIndex.Single(-1));
            var removeOriginal = remove.scatter(-1, indices, remove);
            scores = scores.masked_fill(removeOriginal, minusInfinity);
        }
        return nn.functional.softmax(scores, -1);
    }

    /// <summary>
    /// Advances the generator past <paramref name="steps"/> draws of (<paramref name="rows"/>, <paramref name="vocab"/>)
    /// probabilities, as if those steps had been sampled here: a request resumed after a fault continues with exactly the
    /// random numbers it would have used. (libtorch's multinomial for one sample draws one exponential per entry,
    /// whatever the probabilities.) Greedy decoding draws nothing.
    /// </summary>
    public void Skip(int steps, long rows, long vocab)
    {
        if (_generator is null || steps <= 0) return;
        using var scope = NewDisposeScope();
        var uniform = ones(rows, vocab);
        for (int i = 0; i < steps; i++) torch.multinomial(uniform, 1, generator: _generator);
    }

    /// <summary>The generator's state (null for greedy), to put back with <see cref="Restore"/> when a step is undone.</summary>
    public Tensor? Mark() => _generator?.get_state();

    /// <summary>Puts the generator back where <see cref="Mark"/> found it: a rerun step draws the same numbers again.</summary>
    public void Restore(Tensor? mark)
    {
        if (_generator is not null && mark is not null) _generator.set_state(mark);
    }

    public void Dispose() => _generator?.Dispose();
}
