using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace ShardPipe.Modeling.Tokenization;

/// <summary>
/// A tokenizer.json pattern matched over Unicode code points, as the Rust library (Oniguruma) matches it. .NET's regex
/// sees UTF-16 code units, so a character outside the BMP (emoji, CJK extension B, mathematical letters) is two
/// surrogates of category Cs and no <c>\p{L}</c>, <c>\p{N}</c> or <c>\p{S}</c> matches it. Here each such character is
/// matched as one stand-in BMP character of the same general category (chosen outside the ranges tokenizer patterns
/// name), and the matches are mapped back to the original text.
/// </summary>
public static class CodePointRegex
{
    public static IEnumerable<(int Index, int Length)> Matches(Regex pattern, string text)
    {
        if (!text.AsSpan().ContainsAnyInRange('\uD800', '\uDFFF'))
        {
            foreach (Match m in pattern.Matches(text)) yield return (m.Index, m.Length);
            yield break;
        }
        var stand = new StringBuilder(text.Length);
        var origin = new List<int>(text.Length + 1); // stand-in index -> original index
        for (int i = 0; i < text.Length; i++)
        {
            origin.Add(i);
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                stand.Append(StandIn(CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]))));
                i++;
            }
            else stand.Append(text[i]);
        }
        origin.Add(text.Length);
        foreach (Match m in pattern.Matches(stand.ToString()))
            yield return (origin[m.Index], origin[m.Index + m.Length] - origin[m.Index]);
    }

    private static char StandIn(UnicodeCategory c) => c switch
    {
        UnicodeCategory.UppercaseLetter => '\uA640',
        UnicodeCategory.LowercaseLetter => '\uA641',
        UnicodeCategory.TitlecaseLetter => '\u01C5',
        UnicodeCategory.ModifierLetter => '\uA67F',
        UnicodeCategory.OtherLetter => '\uA000',
        UnicodeCategory.NonSpacingMark => '\uA66F',
        UnicodeCategory.SpacingCombiningMark => '\uA823',
        UnicodeCategory.EnclosingMark => '\u20DD',
        UnicodeCategory.DecimalDigitNumber => '\uA620',
        UnicodeCategory.LetterNumber => '\uA6E6',
        UnicodeCategory.OtherNumber => '\uA830',
        UnicodeCategory.ConnectorPunctuation => '\uFE4D',
        UnicodeCategory.DashPunctuation => '\uFE63',
        UnicodeCategory.OpenPunctuation => '\uFE59',
        UnicodeCategory.ClosePunctuation => '\uFE5A',
        UnicodeCategory.InitialQuotePunctuation => '\u2E02',
        UnicodeCategory.FinalQuotePunctuation => '\u2E03',
        UnicodeCategory.OtherPunctuation => '\uA60D',
        UnicodeCategory.MathSymbol => '\u2A00',
        UnicodeCategory.CurrencySymbol => '\u20B9',
        UnicodeCategory.ModifierSymbol => '\uA700',
        UnicodeCategory.OtherSymbol => '\uA490',
        UnicodeCategory.Format => '\uFFF9',
        UnicodeCategory.PrivateUse => '\uE000',
        _ => '\uFFFF',
    };
}
