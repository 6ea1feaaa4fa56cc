namespace ShardPipe.Modeling.Generation;

/// <summary>
/// Chunked prefill (pure): a prompt longer than its chunk goes through the pipeline a chunk of positions per step, each
/// chunk attending to the cache the ones before it left, so that the other requests merged into the same steps wait at
/// most one chunk. The first step carries the first chunk (<see cref="First"/>); the last hop turns each later one into
/// the next step (<see cref="Next"/>) until nothing is left, and only then samples.
/// </summary>
public static class ChunkedPrefill
{
    public readonly record struct Chunk(long[][] Ids, long[][] Mask, long[][] Positions, Rest? Rest);

    /// <summary>What of a prompt is still to prefill, and the chunk length it goes in (on the wire: <c>PromptRest</c>).</summary>
    public sealed record Rest(long[][] InputIds, long[][] AttentionMask, long[][] PositionIds, int Chunk);

    /// <summary>The first step's part of a prompt and the rest; all of it (no rest) when <paramref name="chunk"/> is 0 or covers it.</summary>
    public static Chunk First(long[][] ids, long[][] mask, long[][] positions, int chunk)
    {
        int length = ids[0].Length;
        if (chunk <= 0 || length <= chunk) return new Chunk(ids, mask, positions, null);
        return new Chunk(Columns(ids, 0, chunk), Columns(mask, 0, chunk), Columns(positions, 0, chunk),
            new Rest(Columns(ids, chunk, length - chunk), Columns(mask, chunk, length - chunk), Columns(positions, chunk, length - chunk), chunk));
    }

    /// <summary>The step after a chunk: the next chunk, with the mask of every position so far grown by it, and what then remains.</summary>
    public static Chunk Next(long[][] maskSoFar, Rest rest)
    {
        int length = rest.InputIds[0].Length, take = Math.Min(rest.Chunk, length);
        var mask = maskSoFar.Select((row, b) => row.Concat(rest.AttentionMask[b].Take(take)).ToArray()).ToArray();
        var remaining = take == length ? null
            : rest with
            {
                InputIds = Columns(rest.InputIds, take, length - take),
                AttentionMask = Columns(rest.AttentionMask, take, length - take),
                PositionIds = Columns(rest.PositionIds, take, length - take),
            };
        return new Chunk(Columns(rest.InputIds, 0, take), mask, Columns(rest.PositionIds, 0, take), remaining);
    }

    private static long[][] Columns(long[][] rows, int start, int count) => rows.Select(r => r.AsSpan(start, count).ToArray()).ToArray();
}
