using System.Globalization;
using System.Text;

namespace ShardPipe.Modeling.Chat;

/// <summary>
/// Python's <c>json.dumps</c>, as transformers' <c>tojson</c> filter calls it (<c>ensure_ascii=False</c> by default,
/// <c>indent</c>, <c>separators</c>, <c>sort_keys</c>; no HTML escaping, unlike jinja2's own tojson): the same text,
/// byte for byte, including Python's float repr and its default separators (", " and ": ", or "," with an indent).
/// </summary>
public static class PyJson
{
    public static string Dumps(object? value, bool ensureAscii = false, string? indent = null, string? itemSeparator = null, string? keySeparator = null, bool sortKeys = false, long maxChars = long.MaxValue)
    {
        var sb = new StringBuilder();
        itemSeparator ??= indent is null ? ", " : ",";
        keySeparator ??= ": ";
        Write(value, sb, ensureAscii, indent, itemSeparator, keySeparator, sortKeys, 0, maxChars);
        return sb.ToString();
    }

    private static void Write(object? v, StringBuilder sb, bool ascii, string? indent, string itemSep, string keySep, bool sort, int level, long maxChars)
    {
        if (sb.Length > maxChars) throw new JinjaError($"tojson output passes {maxChars} characters");
        if (level > 100) throw new JinjaError("tojson: a value nests more than 100 levels deep");
        switch (v)
        {
            case null: sb.Append("null"); break;
            case bool b: sb.Append(b ? "true" : "false"); break;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : Py.FloatRepr(d));
                break;
            case string s: Quote(s, sb, ascii); break;
            case List<object?> list:
                if (list.Count == 0) { sb.Append("[]"); break; }
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(itemSep);
                    NewLine(sb, indent, level + 1);
                    Write(list[i], sb, ascii, indent, itemSep, keySep, sort, level + 1, maxChars);
                }
                NewLine(sb, indent, level);
                sb.Append(']');
                break;
            case Dictionary<string, object?> dict:
                {
                    if (dict.Count == 0) { sb.Append("{}"); break; }
                    sb.Append('{');
                    IEnumerable<KeyValuePair<string, object?>> items = sort ? dict.OrderBy(kv => kv.Key, Comparer<string>.Create(Py.CompareCodePoints)) : dict;
                    bool first = true;
                    foreach (var (k, x) in items)
                    {
                        if (!first) sb.Append(itemSep);
                        first = false;
                        NewLine(sb, indent, level + 1);
                        Quote(k, sb, ascii);
                        sb.Append(keySep);
                        Write(x, sb, ascii, indent, itemSep, keySep, sort, level + 1, maxChars);
                    }
                    NewLine(sb, indent, level);
                    sb.Append('}');
                    break;
                }
            case Namespace ns: Write(ns.Attributes, sb, ascii, indent, itemSep, keySep, sort, level, maxChars); break;
            default: throw new JinjaError($"Object of type {Py.TypeName(v)} is not JSON serializable");
        }
    }

    private static void NewLine(StringBuilder sb, string? indent, int level)
    {
        if (indent is null) return;
        sb.Append('\n');
        for (int i = 0; i < level; i++) sb.Append(indent);
    }

    public static void Quote(string s, StringBuilder sb, bool ascii)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || ascii && c > 0x7e) sb.Append("\\u").Append(((int)c).ToString("x4"));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
