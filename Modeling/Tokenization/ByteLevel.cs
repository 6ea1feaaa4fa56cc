using System.Text;
using System.Text.RegularExpressions;

namespace ShardPipe.Modeling.Tokenization;

/// <summary>
/// GPT-2's byte-level alphabet: every byte maps to one printable character (printable Latin-1 bytes to themselves,
/// the rest to U+0100 onwards), so any text becomes a string over 256 symbols and back without loss.
/// </summary>
public static class ByteLevel
{
    /// <summary>GPT-2's pre-tokenization pattern (contractions, letters, digits, other, whitespace).</summary>
    public static readonly Regex Gpt2Split = new(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.Compiled | RegexOptions.CultureInvariant);

    public static readonly char[] ByteToChar = BuildMap();
    public static readonly Dictionary<char, byte> CharToByte = ByteToChar.Select((c, b) => (c, (byte)b)).ToDictionary(x => x.c, x => x.Item2);

    private static char[] BuildMap()
    {
        var map = new char[256];
        var direct = new bool[256];
        foreach (var (lo, hi) in new[] { ('!', '~'), ('¡', '¬'), ('®', 'ÿ') })
            for (int b = lo; b <= hi; b++) direct[b] = true;
        int next = 0;
        for (int b = 0; b < 256; b++) map[b] = direct[b] ? (char)b : (char)(256 + next++);
        return map;
    }

    /// <summary>A string's UTF-8 bytes in the byte-level alphabet.</summary>
    public static string Encode(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = ByteToChar[bytes[i]];
        return new string(chars);
    }

    /// <summary>Byte-level tokens back to text; a token with a character outside the alphabet counts as its own UTF-8.</summary>
    public static string Decode(IEnumerable<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (var t in tokens)
        {
            if (t.All(CharToByte.ContainsKey)) bytes.AddRange(t.Select(c => CharToByte[c]));
            else bytes.AddRange(Encoding.UTF8.GetBytes(t));
        }
        return Utf8.DecodeLossy(bytes);
    }
}

/// <summary>UTF-8 decoding that never throws: invalid sequences become U+FFFD (as Python's <c>errors="replace"</c>).</summary>
public static class Utf8
{
    private static readonly Encoding Lossy = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false);

    public static string DecodeLossy(IReadOnlyList<byte> bytes) => bytes is byte[] a ? Lossy.GetString(a) : Lossy.GetString(bytes.ToArray());
}
