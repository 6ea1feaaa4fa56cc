using ShardPipe.Modeling.Core;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ShardPipe.Modeling.Generation;

/// <summary>
/// The end-of-sequence and padding ids that <c>generate</c> uses: from generation_config.json (HF falls back to
/// the first eos id when no pad id is set), unless the caller gives its own.
/// </summary>
public sealed record StopTokens(long[] Eos, long Pad)
{
    /// <summary>Reads <c>eos_token_id</c> (an int or a list of ints) and <c>pad_token_id</c>; anything else is a typed error naming the field.</summary>
    public static StopTokens From(JsonObject generationConfig, long[]? eos = null, long? pad = null)
    {
        eos ??= generationConfig["eos_token_id"] switch
        {
            null => Array.Empty<long>(),
            JsonArray a => a.Select(x => Id(x, "eos_token_id")).ToArray(),
            var v => new[] { Id(v, "eos_token_id") },
        };
        pad ??= generationConfig["pad_token_id"] is { } p ? Id(p, "pad_token_id") : eos.FirstOrDefault();
        return new StopTokens(eos, pad.Value);
    }

    private static long Id(JsonNode? node, string field)
    {
        // Only a JSON integer: "2", 2.5 and -1 are refused (a string id would silently never match a token).
        if (node is JsonValue v && v.GetValueKind() == JsonValueKind.Number &&
            long.TryParse(v.ToJsonString(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long id)) return id;
        throw new InvalidInputException($"generation_config.json: {field} must be a non-negative integer or a list of them, not {node?.ToJsonString() ?? "null"}");
    }
}

/// <summary>
/// The per-step rules of HF's <c>generate</c> and <c>forward</c>, in one place for the single-process loop
/// (<see cref="TokenGenerator"/>), the pipeline's stages and the coordinator that starts a request.
/// </summary>
public static class DecodeRule
{
    /// <summary>A mask of ones: every token real (no padding).</summary>
    public static long[][] FullMask(long[][] inputIds) => inputIds.Select(r => Enumerable.Repeat(1L, r.Length).ToArray()).ToArray();

    /// <summary><c>forward</c>'s default positions: <c>0..T−1</c> for every row, even a left-padded one (HF's forward).</summary>
    public static long[][] ForwardPositions(long[][] inputIds) => inputIds.Select(r => Enumerable.Range(0, r.Length).Select(i => (long)i).ToArray()).ToArray();

    /// <summary><c>generate</c>'s positions: <c>cumsum(mask) − 1</c> per row, padded slots set to 1.</summary>
    public static long[][] PositionsFromMask(long[][] mask) => mask.Select(r =>
    {
        long c = 0;
        return r.Select(m => { c += m; return m == 0 ? 1L : c - 1; }).ToArray();
    }).ToArray();

    /// <summary>The next step's mask (one more real token per row) and its single position per row, <c>sum(mask) − 1</c>.</summary>
    public static (long[][] Mask, long[][] Positions) Advance(long[][] mask)
    {
        var grown = mask.Select(r => r.Append(1L).ToArray()).ToArray();
        return (grown, grown.Select(r => new[] { r.Sum() - 1 }).ToArray());
    }

    /// <summary>
    /// Settles one step's tokens: a row already finished gets the pad id; a row that produced an eos id is finished
    /// from now on (unless <paramref name="ignoreEos"/>). Returns the new finished flags; <paramref name="next"/> is updated in place.
    /// </summary>
    public static bool[] Settle(long[] next, bool[] finished, StopTokens stop, bool ignoreEos)
    {
        var now = (bool[])finished.Clone();
        for (int b = 0; b < next.Length; b++)
        {
            if (now[b]) next[b] = stop.Pad;
            else if (EndsRow(next[b], stop.Eos, ignoreEos)) now[b] = true;
        }
        return now;
    }

    /// <summary>Whether <paramref name="token"/> finishes its row: an eos id, unless the request ignores eos.</summary>
    public static bool EndsRow(long token, IEnumerable<long> eos, bool ignoreEos) => !ignoreEos && eos.Contains(token);

    /// <summary>Whether a request is done after <paramref name="steps"/> steps: every row finished, or the token budget spent.</summary>
    public static bool Done(int steps, int maxNewTokens, bool[] finished) => steps >= maxNewTokens || finished.All(f => f);

    /// <summary>
    /// Why a prompt of <paramref name="promptLength"/> tokens plus <paramref name="maxNewTokens"/> cannot run on a model
    /// of <paramref name="positions"/> positions (vLLM's admission rule: refused before it starts, so that a resumed
    /// run never meets a limit its fault-free run would have met later), or null when it fits.
    /// </summary>
    public static string? PastPositions(long promptLength, long maxNewTokens, long positions) =>
        promptLength + maxNewTokens <= positions ? null
            : $"the prompt has {promptLength} tokens and max_new_tokens asks for {maxNewTokens} more ({promptLength + maxNewTokens}); the model takes at most {positions} positions";
}
