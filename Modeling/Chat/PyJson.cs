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

    /// <summary>A JSON string as Python's json.dumps writes it (ensure_ascii with <paramref name="ascii"/>): the checkpoints' one escaper.</summary>
    public static void Quote(string s, StringBuilder sb, bool ascii) => ShardPipe.Checkpoints.JsonText.AppendString(sb, s, ascii);
}
