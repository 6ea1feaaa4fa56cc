using System.Globalization;
using System.Text;

namespace ShardPipe.Modeling.Chat;

/// <summary>
/// The names every template sees: jinja2's <c>range</c> (the sandbox's limit), <c>dict</c>, <c>namespace</c>,
/// <c>cycler</c>, <c>joiner</c>, and transformers' <c>raise_exception(message)</c> and <c>strftime_now(format)</c>
/// (the interpreter's clock, which <see cref="ChatTemplate"/> pins with SHARDPIPE_CHAT_DATE).
/// </summary>
public static class JinjaGlobals
{
    public static readonly IReadOnlyDictionary<string, object?> All = new Dictionary<string, object?>
    {
        ["range"] = new JinjaFunction("range", Range),
        ["dict"] = new JinjaFunction("dict", (_, args, kwargs) =>
        {
            var d = new Dictionary<string, object?>(StringComparer.Ordinal);
            if (args.Count > 0)
            {
                if (args[0] is Dictionary<string, object?> src) foreach (var (k, v) in src) d[k] = v;
                else foreach (var pair in Py.Iterate(args[0])) { var p = Py.ToList(pair); d[p[0] as string ?? throw new JinjaError("dict keys must be strings here")] = p[1]; }
            }
            foreach (var (k, v) in kwargs) d[k] = v;
            return d;
        }),
        ["namespace"] = new JinjaFunction("namespace", (_, args, kwargs) =>
        {
            var ns = new Namespace();
            if (args.Count > 0 && args[0] is Dictionary<string, object?> src) foreach (var (k, v) in src) ns.Attributes[k] = v;
            foreach (var (k, v) in kwargs) ns.Attributes[k] = v;
            return ns;
        }),
        ["cycler"] = new JinjaFunction("cycler", (_, args, _) =>
        {
            int pos = 0;
            var c = new Namespace();
            c.Attributes["next"] = new JinjaFunction("cycler.next", (_, _, _) => { var v = args[pos]; pos = (pos + 1) % args.Count; return v; });
            c.Attributes["reset"] = new JinjaFunction("cycler.reset", (_, _, _) => { pos = 0; return null; });
            return c;
        }),
        ["joiner"] = new JinjaFunction("joiner", (_, args, _) =>
        {
            string sep = args.Count > 0 ? Py.Str(args[0]) : ", ";
            bool used = false;
            return new JinjaFunction("joiner", (_, _, _) => { if (!used) { used = true; return ""; } return sep; });
        }),
        ["raise_exception"] = new JinjaFunction("raise_exception", (_, args, _) => throw new TemplateRaised(args.Count > 0 ? Py.Str(args[0]) : "")),
        ["strftime_now"] = new JinjaFunction("strftime_now", (it, args, _) => Strftime(it.Now, args.Count > 0 ? Py.Str(args[0]) : "")),
    };

    private static object? Range(Interpreter it, List<object?> args, Dictionary<string, object?> kwargs)
    {
        if (kwargs.Count > 0) throw new JinjaError("range() takes no keyword arguments");
        long start = 0, stop, step = 1;
        switch (args.Count)
        {
            case 1: stop = Py.ToLong(args[0]); break;
            case 2: start = Py.ToLong(args[0]); stop = Py.ToLong(args[1]); break;
            case 3: start = Py.ToLong(args[0]); stop = Py.ToLong(args[1]); step = Py.ToLong(args[2]); break;
            default: throw new JinjaError($"range expected 1 to 3 arguments, got {args.Count}");
        }
        if (step == 0) throw new JinjaError("range() arg 3 must not be zero");
        long count = step > 0 ? (stop > start ? (stop - start + step - 1) / step : 0) : (start > stop ? (start - stop - step - 1) / -step : 0);
        if (count > it.Limits.MaxRange)
            throw new JinjaError($"Range too big. The sandbox blocks ranges larger than MAX_RANGE ({it.Limits.MaxRange}).");
        var list = new List<object?>((int)count);
        for (long i = 0, v = start; i < count; i++, v += step) list.Add(v);
        return list;
    }

    /// <summary>Python's <c>datetime.strftime</c> for the directives templates use (C locale).</summary>
    public static string Strftime(DateTime t, string format)
    {
        var ci = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length) { sb.Append(format[i]); continue; }
            char c = format[++i];
            bool noPad = false;
            if (c == '-' && i + 1 < format.Length) { noPad = true; c = format[++i]; }
            string Pad(int v, int width) => noPad ? v.ToString(ci) : v.ToString(new string('0', width), ci);
            sb.Append(c switch
            {
                'Y' => t.Year.ToString(ci),
                'y' => Pad(t.Year % 100, 2),
                'm' => Pad(t.Month, 2),
                'd' => Pad(t.Day, 2),
                'e' => t.Day.ToString(ci).PadLeft(2),
                'H' => Pad(t.Hour, 2),
                'I' => Pad(t.Hour % 12 == 0 ? 12 : t.Hour % 12, 2),
                'M' => Pad(t.Minute, 2),
                'S' => Pad(t.Second, 2),
                'f' => (t.Ticks % TimeSpan.TicksPerSecond / 10).ToString("000000", ci),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'B' => ci.DateTimeFormat.GetMonthName(t.Month),
                'b' or 'h' => ci.DateTimeFormat.GetAbbreviatedMonthName(t.Month),
                'A' => ci.DateTimeFormat.GetDayName(t.DayOfWeek),
                'a' => ci.DateTimeFormat.GetAbbreviatedDayName(t.DayOfWeek),
                'j' => Pad(t.DayOfYear, 3),
                'w' => ((int)t.DayOfWeek).ToString(ci),
                'u' => (t.DayOfWeek == DayOfWeek.Sunday ? 7 : (int)t.DayOfWeek).ToString(ci),
                'F' => t.ToString("yyyy-MM-dd", ci),
                'D' => t.ToString("MM/dd/yy", ci),
                'T' => t.ToString("HH:mm:ss", ci),
                'R' => t.ToString("HH:mm", ci),
                'Z' => "",
                'z' => "",
                '%' => "%",
                _ => "%" + c,
            });
        }
        return sb.ToString();
    }
}

/// <summary>A template's own <c>raise_exception(message)</c>: the message is the template author's, shown as given.</summary>
public sealed class TemplateRaised : Exception
{
    public TemplateRaised(string message) : base(message) { }
}
