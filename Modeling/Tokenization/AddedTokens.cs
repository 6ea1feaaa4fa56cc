namespace ShardPipe.Modeling.Tokenization;

/// <summary>A token added on top of the model's vocabulary (special or not), matched in the text before tokenizing it.</summary>
public sealed record AddedToken(int Id, string Content, bool Special, bool LStrip = false, bool RStrip = false, bool SingleWord = false, bool Normalized = false);

/// <summary>A piece of the input: text for the model, or an added token found in it.</summary>
public readonly record struct Segment(string Text, AddedToken? Token, bool AtStart);

/// <summary>
/// Splits text on added tokens as Hugging Face does: the leftmost match, the longest at that position; a token with
/// <c>lstrip</c>/<c>rstrip</c> takes the whitespace beside it; a <c>single_word</c> token matches only between
/// non-word characters.
/// </summary>
public sealed class AddedTokenSplitter
{
    private readonly AddedToken[] _tokens;

    public AddedTokenSplitter(IEnumerable<AddedToken> tokens) =>
        _tokens = tokens.Where(t => t.Content.Length > 0).OrderByDescending(t => t.Content.Length).ToArray();

    public bool IsEmpty => _tokens.Length == 0;

    /// <param name="atStart">Whether <paramref name="text"/> begins the input (a pre-tokenizer may prepend only there).</param>
    public List<Segment> Split(string text, bool atStart = true)
    {
        var segments = new List<Segment>();
        int from = 0; // start of the pending text
        for (int i = 0; i < text.Length;)
        {
            var token = _tokens.FirstOrDefault(t => string.CompareOrdinal(text, i, t.Content, 0, t.Content.Length) == 0 && WordOk(text, i, t));
            if (token is null)
            {
                i++;
                continue;
            }
            int start = i, end = i + token.Content.Length;
            if (token.LStrip) while (start > from && char.IsWhiteSpace(text[start - 1])) start--;
            if (token.RStrip) while (end < text.Length && char.IsWhiteSpace(text[end])) end++;
            if (start > from) segments.Add(new Segment(text[from..start], null, atStart && from == 0));
            segments.Add(new Segment(token.Content, token, false));
            from = i = end;
        }
        if (from < text.Length) segments.Add(new Segment(text[from..], null, atStart && from == 0));
        return segments;
    }

    private static bool WordOk(string text, int at, AddedToken t)
    {
        if (!t.SingleWord) return true;
        bool Word(int k) => k >= 0 && k < text.Length && (char.IsLetterOrDigit(text[k]) || text[k] == '_');
        return !Word(at - 1) && !Word(at + t.Content.Length);
    }
}
