using System.Globalization;
using System.Text;

namespace ShardPipe.Checkpoints;

/// <summary>JSON string escaping as serde_json writes it, or Python's json.dumps (ensure_ascii) with <c>asciiOnly</c>.</summary>
public static class JsonText
{
    public static void AppendString(StringBuilder sb, string s, bool asciiOnly = false)
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
                    if (c < 0x20 || (asciiOnly && c > 0x7e)) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
