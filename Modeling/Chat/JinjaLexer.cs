using System.Globalization;
using System.Text;

namespace ShardPipe.Modeling.Chat;

public enum TokenKind { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof }

public sealed record JinjaToken(TokenKind Kind, string Text, int Line, object? Value = null)
{
    public bool Is(TokenKind kind, string text) => Kind == kind && Text == text;
    public override string ToString() => Kind switch { TokenKind.Eof => "end of template", TokenKind.Data => "text", _ => $"'{Text}'" };
}

/// <summary>
/// jinja2's lexer as transformers configures it: newlines normalised to \n and one trailing newline dropped
/// (keep_trailing_newline=False); <c>{{ }}</c>, <c>{% %}</c>, <c>{# #}</c> and <c>{% raw %}</c>; the whitespace rules
/// lstrip_blocks (spaces and tabs before a block or comment tag at a line's start go), trim_blocks (the first newline
/// after one goes), <c>-</c> (all whitespace on that side goes) and <c>+</c> (neither rule on that side). Inside a tag,
/// Python-like tokens; a closing delimiter counts only outside brackets.
/// </summary>
public static class JinjaLexer
{
    private static readonly string[] Operators = { "//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";" };

    public static List<JinjaToken> Tokenize(string source)
    {
        string s = source.Replace("\r\n", "\n").Replace('\r', '\n');
        if (s.EndsWith('\n')) s = s[..^1];
        var tokens = new List<JinjaToken>();
        int pos = 0, line = 1;
        bool lineStarting = true;
        while (pos < s.Length)
        {
            int open = FindOpener(s, pos);
            string data = open < 0 ? s[pos..] : s[pos..open];
            if (open < 0)
            {
                Emit(tokens, data, line);
                break;
            }
            char kind = s[open + 1];
            int after = open + 2;
            char modifier = after < s.Length && s[after] is '-' or '+' ? s[after] : '\0';
            if (modifier == '-') data = Py.Strip(data, null, left: false);
            else if (modifier != '+' && kind is '%' or '#')
            {
                int lpos = data.LastIndexOf('\n') + 1;
                if ((lpos > 0 || lineStarting) && data.AsSpan(lpos).IndexOfAnyExcept(' ', '\t') < 0) data = data[..lpos];
            }
            Emit(tokens, data, line);
            line += Count(s, pos, open);
            if (modifier != '\0') after++;

            if (kind == '#')
            {
                int end = s.IndexOf("#}", after, StringComparison.Ordinal);
                if (end < 0) throw new JinjaSyntaxError("the comment is never closed ('#}' missing)", line);
                line += Count(s, open, end);
                pos = end + 2;
                char closeMod = s[end - 1] is '-' or '+' && end - 1 >= after ? s[end - 1] : '\0';
                pos = AfterTag(s, pos, closeMod, trim: true, ref line);
                lineStarting = pos > 0 && s[pos - 1] == '\n';
                continue;
            }

            if (kind == '%' && RawBlock(s, after) is { } rawEnd)
            {
                // {% raw %}…{% endraw %}: the text between is data as written.
                int close = s.IndexOf("%}", after, StringComparison.Ordinal);
                char rawMod = s[close - 1] is '-' or '+' ? s[close - 1] : '\0';
                int bodyStart = AfterTag(s, close + 2, rawMod, trim: true, ref line);
                var endTag = rawEnd;
                string body = s[bodyStart..endTag.Start];
                if (endTag.OpenModifier == '-') body = Py.Strip(body, null, left: false);
                tokens.Add(new JinjaToken(TokenKind.Data, body, line));
                line += Count(s, open, endTag.Start) - Count(s, open, bodyStart) + Count(s, open, bodyStart);
                line = 1 + Count(s, 0, endTag.End);
                pos = AfterTag(s, endTag.End, endTag.CloseModifier, trim: true, ref line);
                lineStarting = pos > 0 && s[pos - 1] == '\n';
                continue;
            }

            bool block = kind == '%';
            tokens.Add(new JinjaToken(block ? TokenKind.BlockBegin : TokenKind.VarBegin, block ? "{%" : "{{", line));
            pos = InsideTag(s, after, block, tokens, ref line);
            lineStarting = pos > 0 && s[pos - 1] == '\n';
        }
        tokens.Add(new JinjaToken(TokenKind.Eof, "", line));
        return tokens;
    }

    private static void Emit(List<JinjaToken> tokens, string data, int line)
    {
        if (data.Length > 0) tokens.Add(new JinjaToken(TokenKind.Data, data, line));
    }

    private static int Count(string s, int from, int to)
    {
        int n = 0;
        for (int i = from; i < to && i < s.Length; i++) if (s[i] == '\n') n++;
        return n;
    }

    private static int FindOpener(string s, int from)
    {
        for (int i = s.IndexOf('{', from); i >= 0 && i + 1 < s.Length; i = s.IndexOf('{', i + 1))
            if (s[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    /// <summary>After a closing delimiter: '-' eats all whitespace, '+' nothing, else trim_blocks eats one newline (block tags).</summary>
    private static int AfterTag(string s, int pos, char modifier, bool trim, ref int line)
    {
        if (modifier == '-')
        {
            int start = pos;
            while (pos < s.Length && Py.IsSpace(s[pos])) pos++;
            line += Count(s, start, pos);
        }
        else if (modifier != '+' && trim && pos < s.Length && s[pos] == '\n') { pos++; line++; }
        return pos;
    }

    private sealed record RawEnd(int Start, int End, char OpenModifier, char CloseModifier);

    private static RawEnd? RawBlock(string s, int after)
    {
        int i = after;
        while (i < s.Length && Py.IsSpace(s[i])) i++;
        if (string.CompareOrdinal(s, i, "raw", 0, 3) != 0) return null;
        i += 3;
        while (i < s.Length && Py.IsSpace(s[i])) i++;
        if (i < s.Length && s[i] is '-' or '+') i++;
        if (string.CompareOrdinal(s, i, "%}", 0, 2) != 0) return null;
        for (int k = s.IndexOf("{%", i, StringComparison.Ordinal); k >= 0; k = s.IndexOf("{%", k + 2, StringComparison.Ordinal))
        {
            int j = k + 2;
            char openMod = j < s.Length && s[j] is '-' or '+' ? s[j++] : '\0';
            while (j < s.Length && Py.IsSpace(s[j])) j++;
            if (string.CompareOrdinal(s, j, "endraw", 0, 6) != 0) continue;
            j += 6;
            while (j < s.Length && Py.IsSpace(s[j])) j++;
            char closeMod = j < s.Length && s[j] is '-' or '+' ? s[j++] : '\0';
            if (string.CompareOrdinal(s, j, "%}", 0, 2) != 0) continue;
            return new RawEnd(k, j + 2, openMod, closeMod);
        }
        throw new JinjaSyntaxError("'{% raw %}' is never closed ('{% endraw %}' missing)", 1 + Count(s, 0, after));
    }

    private static int InsideTag(string s, int pos, bool block, List<JinjaToken> tokens, ref int line)
    {
        int depth = 0;
        int startLine = line;
        while (true)
        {
            while (pos < s.Length && Py.IsSpace(s[pos])) { if (s[pos] == '\n') line++; pos++; }
            if (pos >= s.Length) throw new JinjaSyntaxError($"the tag opened here is never closed ('{(block ? "%}" : "}}")}' missing)", startLine);
            if (depth == 0)
            {
                string close = block ? "%}" : "}}";
                char m = s[pos] is '-' or '+' ? s[pos] : '\0';
                int at = m != '\0' ? pos + 1 : pos;
                if (string.CompareOrdinal(s, at, close, 0, 2) == 0 && (m != '+' || block))
                {
                    tokens.Add(new JinjaToken(block ? TokenKind.BlockEnd : TokenKind.VarEnd, close, line));
                    return AfterTag(s, at + 2, m, trim: block, ref line);
                }
            }
            char c = s[pos];
            if (char.IsLetter(c) || c == '_')
            {
                int start = pos;
                while (pos < s.Length && (char.IsLetterOrDigit(s[pos]) || s[pos] == '_')) pos++;
                tokens.Add(new JinjaToken(TokenKind.Name, s[start..pos], line));
            }
            else if (c is '\'' or '"')
            {
                int start = pos;
                var sb = new StringBuilder();
                pos++;
                while (true)
                {
                    if (pos >= s.Length) throw new JinjaSyntaxError("a string is never closed", line);
                    char x = s[pos];
                    if (x == c) { pos++; break; }
                    if (x == '\\' && pos + 1 < s.Length) { pos = Escape(s, pos, sb); continue; }
                    if (x == '\n') line++;
                    sb.Append(x);
                    pos++;
                }
                tokens.Add(new JinjaToken(TokenKind.String, s[start..pos], line, sb.ToString()));
            }
            else if (char.IsAsciiDigit(c))
            {
                pos = Number(s, pos, tokens, line);
            }
            else
            {
                string? op = Operators.FirstOrDefault(o => string.CompareOrdinal(s, pos, o, 0, o.Length) == 0);
                if (op is null) throw new JinjaSyntaxError($"unexpected character '{c}'", line);
                if (op is "(" or "[" or "{") depth++;
                else if (op is ")" or "]" or "}") depth = Math.Max(0, depth - 1);
                tokens.Add(new JinjaToken(TokenKind.Op, op, line));
                pos += op.Length;
            }
        }
    }

    private static int Number(string s, int pos, List<JinjaToken> tokens, int line)
    {
        int start = pos;
        if (s[pos] == '0' && pos + 1 < s.Length && s[pos + 1] is 'x' or 'X' or 'o' or 'O' or 'b' or 'B')
        {
            int radix = s[pos + 1] is 'x' or 'X' ? 16 : s[pos + 1] is 'o' or 'O' ? 8 : 2;
            pos += 2;
            int digitsStart = pos;
            while (pos < s.Length && (Uri.IsHexDigit(s[pos]) || s[pos] == '_')) pos++;
            string digits = s[digitsStart..pos].Replace("_", "");
            tokens.Add(new JinjaToken(TokenKind.Int, s[start..pos], line, Convert.ToInt64(digits, radix)));
            return pos;
        }
        while (pos < s.Length && (char.IsAsciiDigit(s[pos]) || s[pos] == '_' && pos + 1 < s.Length && char.IsAsciiDigit(s[pos + 1]))) pos++;
        bool isFloat = false;
        if (pos + 1 < s.Length && s[pos] == '.' && char.IsAsciiDigit(s[pos + 1]))
        {
            isFloat = true;
            pos++;
            while (pos < s.Length && (char.IsAsciiDigit(s[pos]) || s[pos] == '_')) pos++;
        }
        if (pos < s.Length && s[pos] is 'e' or 'E')
        {
            int e = pos + 1;
            if (e < s.Length && s[e] is '+' or '-') e++;
            if (e < s.Length && char.IsAsciiDigit(s[e]))
            {
                isFloat = true;
                pos = e;
                while (pos < s.Length && char.IsAsciiDigit(s[pos])) pos++;
            }
        }
        string text = s[start..pos].Replace("_", "");
        if (isFloat) tokens.Add(new JinjaToken(TokenKind.Float, text, line, double.Parse(text, CultureInfo.InvariantCulture)));
        else if (long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long l)) tokens.Add(new JinjaToken(TokenKind.Int, text, line, l));
        else throw new JinjaSyntaxError($"the integer {text} is too large", line);
        return pos;
    }

    /// <summary>Python's string escapes (jinja2 decodes string literals with unicode-escape).</summary>
    private static int Escape(string s, int pos, StringBuilder sb)
    {
        char e = s[pos + 1];
        pos += 2;
        switch (e)
        {
            case 'n': sb.Append('\n'); break;
            case 't': sb.Append('\t'); break;
            case 'r': sb.Append('\r'); break;
            case '\\': sb.Append('\\'); break;
            case '\'': sb.Append('\''); break;
            case '"': sb.Append('"'); break;
            case 'a': sb.Append('\a'); break;
            case 'b': sb.Append('\b'); break;
            case 'f': sb.Append('\f'); break;
            case 'v': sb.Append('\v'); break;
            case '\n': break;
            case 'x': case 'u': case 'U':
                {
                    int n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                    if (pos + n > s.Length || !int.TryParse(s.AsSpan(pos, n), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int cp))
                        throw new JinjaSyntaxError($"a '\\{e}' escape needs {n} hex digits", 0);
                    sb.Append(char.ConvertFromUtf32(cp));
                    pos += n;
                    break;
                }
            case >= '0' and <= '7':
                {
                    int v = e - '0', k = 0;
                    while (k < 2 && pos < s.Length && s[pos] is >= '0' and <= '7') { v = v * 8 + (s[pos] - '0'); pos++; k++; }
                    sb.Append((char)v);
                    break;
                }
            default: sb.Append('\\').Append(e); break;
        }
        return pos;
    }
}

/// <summary>A template that is not valid Jinja; the line is where the problem was found.</summary>
public sealed class JinjaSyntaxError : Exception
{
    public int Line { get; }
    public JinjaSyntaxError(string message, int line) : base(message) => Line = line;
}
