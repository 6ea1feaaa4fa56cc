namespace ShardPipe.Modeling.Tokenization;

/// <summary>
/// Turns tokens that arrive one step at a time into text pieces whose concatenation is exactly the decoding of all
/// of them at once (<see cref="ModelTokenizer.Decode"/> with the same flag). Each step decodes the tokens so far and
/// emits what extends the text already emitted, holding back an incomplete UTF-8 sequence (a trailing U+FFFD from a
/// byte token whose continuation has not arrived) and, when the tokenizer cleans up spaces before punctuation, the
/// last few characters a later token could still change. <see cref="Flush"/> gives the rest at the end.
/// </summary>
public sealed class StreamingDecoder
{
    /// <summary>The longest clean-up pattern (" n't"): text further back than this cannot change any more.</summary>
    private const int CleanUpReach = 4;

    private readonly ModelTokenizer _tokenizer;
    private readonly bool _skipSpecial;
    private readonly List<long> _ids = new();
    private int _emitted;

    public StreamingDecoder(ModelTokenizer tokenizer, bool skipSpecialTokens)
    {
        _tokenizer = tokenizer;
        _skipSpecial = skipSpecialTokens;
    }

    /// <summary>Adds tokens; returns the text they settle ("" while it may still change).</summary>
    public string Add(IEnumerable<long> ids)
    {
        _ids.AddRange(ids);
        string full = _tokenizer.Decode(_ids, _skipSpecial);
        int settled = full.Length;
        if (_tokenizer.CleansUpSpaces) settled -= CleanUpReach;
        while (settled > 0 && (full[settled - 1] == '\uFFFD' || char.IsHighSurrogate(full[settled - 1]))) settled--;
        return Emit(full, settled);
    }

    /// <summary>Everything not emitted yet (call once the last token has been added).</summary>
    public string Flush()
    {
        string full = _tokenizer.Decode(_ids, _skipSpecial);
        return Emit(full, full.Length);
    }

    /// <summary>
    /// Emits <c>full[emitted..upTo]</c>. The text before <c>emitted</c> does not change as tokens arrive, with one
    /// exception that Hugging Face has too: a legacy Llama tokenizer decoding special tokens (skip_special_tokens
    /// false) puts a space in front of the text before each special token once that token arrives. Streams for
    /// generation skip special tokens; otherwise the pieces carry on from the length already emitted.
    /// </summary>
    private string Emit(string full, int upTo)
    {
        if (upTo <= _emitted) return "";
        string piece = full[_emitted..upTo];
        _emitted = upTo;
        return piece;
    }
}
