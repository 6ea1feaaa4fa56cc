namespace ShardPipe.Modeling.Layers;

/// <summary>
/// Pulls the next product's weights toward the cache while the kernels' helper threads have nothing to do. Between two
/// products of a decode step the calling thread runs the step's serial work (norms, rotary, attention's set-up, small
/// libtorch calls) — in an int4 decode step about 29 % of the token on the main thread, with the helper spinning
/// idle and memory unused. A step reads its weights in the same order every time, so the order is learnt: each product
/// that takes part (<see cref="DecodeKernels.RunWeights"/> given its first weight) notes which weight followed the one
/// before it on this thread, and when a product ends the helpers are handed the first <see cref="Bytes"/> of the weight
/// that followed it last time (<see cref="SpinPool.PrefetchHint"/>). The first step only learns; a wrong guess (another
/// request's shape, a model released) costs a few prefetches of memory nobody reads next — a prefetch never faults.
/// <para>The int4 one-row products take part (<c>QuantKernels</c>: their weights are small next to the serial work
/// around them). In one process, alternating generations of the 134M Llama with it on and off (medians of 10–14):
/// int4 364 → 385, 343 → 352, 361 → 370 tok/s (and 374 → 398 in the prototype, 4 MB; 386 at 1 MB, 390 at 16 MB); int8
/// 262 → 247, 253 → 251; bf16 134 → 142 and 148 → 148; float32 79 → 80 and 89 → 85 — so int8, bf16 and float32
/// products do not take part (BENCHMARKS.md, session 15).</para>
/// </summary>
public static class WeightPrefetch
{
    /// <summary>Off: no hints (benchmarks compare both in one process; default on).</summary>
    public static bool Enabled { get; set; } = true;

    /// <summary>The most of the next weight handed to the helpers (4 MB: a 134M Llama's int4 layer weights whole, the
    /// first part of its head).</summary>
    public const long Bytes = 4L << 20;

    /// <summary>Entries the learnt order keeps before it starts again (models come and go; a model has a few hundred).</summary>
    internal const int MaxEntries = 1 << 14;

    private static readonly Dictionary<nint, (nint Address, long Bytes)> Next = new();
    private static readonly object Gate = new();
    [ThreadStatic] private static nint _previous;

    /// <summary>A product whose first weight lies at <paramref name="weight"/> (<paramref name="bytes"/> long) starts on
    /// this thread: it is what followed the product before it.</summary>
    public static void Starting(nint weight, long bytes)
    {
        if (!Enabled || weight == 0) return;
        nint previous = _previous;
        _previous = weight;
        if (previous == 0 || previous == weight) return;
        lock (Gate)
        {
            if (Next.Count >= MaxEntries && !Next.ContainsKey(previous)) Next.Clear();
            Next[previous] = (weight, bytes);
        }
    }

    /// <summary>The product of <paramref name="weight"/> ended: <paramref name="pool"/>'s idle helpers are handed the
    /// weight that followed it last time (if any).</summary>
    public static void Done(nint weight, SpinPool pool)
    {
        if (!Enabled || weight == 0) return;
        (nint Address, long Bytes) next;
        lock (Gate)
            if (!Next.TryGetValue(weight, out next)) return;
        pool.PrefetchHint(next.Address, Math.Min(next.Bytes, Bytes));
    }

    /// <summary>What was learnt to follow <paramref name="weight"/>, if anything (diagnostics, tests).</summary>
    public static (nint Address, long Bytes)? Following(nint weight)
    {
        lock (Gate) return Next.TryGetValue(weight, out var next) ? next : null;
    }
}
