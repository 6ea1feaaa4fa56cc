using System.Globalization;
using System.Net;
using System.Text;
using System.Text.RegularExpressions;

namespace ShardPipe.Modeling.Chat;

/// <summary>
/// jinja2 3.1's built-in filters with their signatures (positional or keyword), and transformers' <c>tojson</c>
/// (<c>json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)</c>). An unknown filter is an
/// error naming it.
/// </summary>
public static class JinjaFilters
{
    private delegate object? Filter(Interpreter it, object? value, Args args);

    private sealed record Entry(string[] Params, Filter Body);

    private static readonly Dictionary<string, Entry> All = new(StringComparer.Ordinal)
    {
        ["abs"] = new(P(), (_, v, _) => v switch { long l => (object)Math.Abs(l), double d => (object)Math.Abs(d), bool b => (object)(b ? 1L : 0L), _ => throw new JinjaError($"bad operand type for abs(): '{Py.TypeName(v)}'") }),
        ["attr"] = new(P("name"), (_, v, a) => Members.GetAttr(v, a.Required("name") as string ?? throw new JinjaError("attr() needs a string"))),
        ["capitalize"] = new(P(), (_, v, _) => { string s = Py.Str(v); return s.Length == 0 ? s : s[..1].ToUpperInvariant() + s[1..].ToLowerInvariant(); }),
        ["center"] = new(P("width"), (_, v, a) =>
        {
            string s = Py.Str(v);
            int width = (int)Math.Min(Py.ToLong(a.Get("width", 80L)), 1_000_000), len = Py.Length(s);
            if (len >= width) return s;
            int total = width - len, left = total / 2 + (total & width & 1);
            return new string(' ', left) + s + new string(' ', total - left);
        }),
        ["default"] = new(P("default_value", "boolean"), (_, v, a) => v is Undefined || Py.Truthy(a.Get("boolean", false)) && !Py.Truthy(v) ? a.Get("default_value", "") : v),
        ["dictsort"] = new(P("case_sensitive", "by", "reverse"), (_, v, a) =>
        {
            if (v is not Dictionary<string, object?> d) throw new JinjaError("dictsort needs a dict");
            bool cs = Py.Truthy(a.Get("case_sensitive", false)), rev = Py.Truthy(a.Get("reverse", false));
            int pos = a.Get("by", "key") switch { "key" => 0, "value" => 1, _ => throw new JinjaError("You can only sort by either \"key\" or \"value\"") };
            var items = d.Select(kv => (List<object?>)new PyTuple { kv.Key, kv.Value }).ToList();
            var sorted = Sort(items, x => x[pos], cs);
            if (rev) sorted.Reverse();
            return sorted.Cast<object?>().ToList();
        }),
        ["escape"] = new(P(), (_, v, _) => v is Undefined ? "" : WebUtility.HtmlEncode(Py.Str(v)).Replace("&#39;", "&#39;")),
        ["first"] = new(P(), (_, v, _) => Py.Iterate(v).Cast<object?>().DefaultIfEmpty(new Undefined("No first item, sequence was empty.")).First()),
        ["float"] = new(P("default"), (_, v, a) => ToFloat(v) ?? a.Get("default", 0.0)),
        ["indent"] = new(P("width", "first", "blank"), (_, v, a) => Indent(Py.Str(v), a.Get("width", 4L), Py.Truthy(a.Get("first", false)), Py.Truthy(a.Get("blank", false)))),
        ["int"] = new(P("default", "base"), (_, v, a) => ToInt(v, (int)Py.ToLong(a.Get("base", 10L))) ?? a.Get("default", 0L)),
        ["items"] = new(P(), (_, v, _) => v switch
        {
            Undefined => new List<object?>(),
            Dictionary<string, object?> d => d.Select(kv => (object?)new PyTuple { kv.Key, kv.Value }).ToList(),
            _ => throw new JinjaError($"Can only get item pairs from a mapping, not {Py.TypeName(v)}"),
        }),
        ["join"] = new(P("d", "attribute"), (it, v, a) =>
        {
            var items = Py.Iterate(v);
            if (a.Get("attribute") is { } attr) items = items.Select(Getter(attr, null));
            var parts = items.Select(Py.Str).ToList();
            string sep = Py.Str(a.Get("d", ""));
            it.Spend(parts.Sum(p => (long)p.Length) + (long)sep.Length * parts.Count);
            return string.Join(sep, parts);
        }),
        ["last"] = new(P(), (_, v, _) => v switch
        {
            List<object?> l => l.Count > 0 ? l[^1] : new Undefined("No last item, sequence was empty."),
            _ => Py.ToList(v) is { Count: > 0 } x ? x[^1] : new Undefined("No last item, sequence was empty."),
        }),
        ["length"] = new(P(), (_, v, _) => Length(v)),
        ["list"] = new(P(), (_, v, _) => Py.ToList(v)),
        ["lower"] = new(P(), (_, v, _) => Py.Str(v).ToLowerInvariant()),
        ["upper"] = new(P(), (_, v, _) => Py.Str(v).ToUpperInvariant()),
        ["max"] = new(P("case_sensitive", "attribute"), (_, v, a) => MinMax(v, a, max: true)),
        ["min"] = new(P("case_sensitive", "attribute"), (_, v, a) => MinMax(v, a, max: false)),
        ["pprint"] = new(P(), (_, v, _) => Py.Repr(v)),
        ["replace"] = new(P("old", "new", "count"), (it, v, a) =>
        {
            string s = Py.Str(v), old = Py.Str(a.Required("old")), @new = Py.Str(a.Required("new"));
            long count = a.Get("count") is { } c ? Py.ToLong(c) : -1;
            long occurrences = old.Length == 0 ? s.Length + 1 : (s.Length - s.Replace(old, "", StringComparison.Ordinal).Length) / old.Length;
            it.Spend(s.Length + Math.Max(0, @new.Length - old.Length) * occurrences);
            return Members.Replace(s, old, @new, count);
        }),
        ["reverse"] = new(P(), (_, v, _) => v switch
        {
            string s => string.Concat(Py.CodePoints(s).Reverse()),
            _ => Py.ToList(v).AsEnumerable().Reverse().ToList(),
        }),
        ["round"] = new(P("precision", "method"), (_, v, a) =>
        {
            int precision = (int)Py.ToLong(a.Get("precision", 0L));
            double x = Py.ToDouble(v), f = Math.Pow(10, precision);
            return a.Get("method", "common") switch
            {
                "common" => precision is >= 0 and <= 15 ? Math.Round(x, precision, MidpointRounding.ToEven) : Math.Round(x * f, MidpointRounding.ToEven) / f, // Python's round: half to even
                "ceil" => Math.Ceiling(x * f) / f,
                "floor" => Math.Floor(x * f) / f,
                _ => throw new JinjaError("method must be common, ceil or floor"),
            };
        }),
        ["safe"] = new(P(), (_, v, _) => v),
        ["sort"] = new(P("reverse", "case_sensitive", "attribute"), (_, v, a) =>
        {
            var items = Py.ToList(v);
            var key = a.Get("attribute") is { } attr ? Getter(attr, null) : x => x;
            var sorted = Sort(items, key, Py.Truthy(a.Get("case_sensitive", false)));
            if (Py.Truthy(a.Get("reverse", false))) sorted.Reverse();
            return sorted;
        }),
        ["string"] = new(P(), (_, v, _) => Py.Str(v)),
        ["striptags"] = new(P(), (_, v, _) => Regex.Replace(Regex.Replace(Py.Str(v), "<!--.*?-->|<[^>]*>", ""), @"\s+", " ").Trim()),
        ["sum"] = new(P("attribute", "start"), (it, v, a) =>
        {
            var items = Py.Iterate(v);
            if (a.Get("attribute") is { } attr) items = items.Select(Getter(attr, null));
            object? total = a.Get("start", 0L);
            foreach (var x in items) total = Operators.Binary(it, "+", total, x);
            return total;
        }),
        ["title"] = new(P(), (_, v, _) => string.Concat(Regex.Split(Py.Str(v), @"([-\s({\[<]+)").Where(w => w.Length > 0)
            .Select(w => w[..1].ToUpperInvariant() + w[1..].ToLowerInvariant()))),
        ["tojson"] = new(P("ensure_ascii", "indent", "separators", "sort_keys"), (it, v, a) =>
        {
            string? indent = a.Get("indent") switch { null => null, long n => new string(' ', (int)Math.Clamp(n, 0, 64)), string s => s, var x => throw new JinjaError($"indent must be an int or str, not {Py.TypeName(x)}") };
            string? item = null, key = null;
            if (a.Get("separators") is List<object?> { Count: 2 } seps) { item = Py.Str(seps[0]); key = Py.Str(seps[1]); }
            else if (a.Get("separators") is not null) throw new JinjaError("separators must be a pair (item_separator, key_separator)");
            string json = PyJson.Dumps(v, Py.Truthy(a.Get("ensure_ascii", false)), indent, item, key, Py.Truthy(a.Get("sort_keys", false)), it.Limits.MaxChars);
            it.Spend(json.Length);
            return json;
        }),
        ["trim"] = new(P("chars"), (_, v, a) => Py.Strip(Py.Str(v), a.Get("chars") as string)),
        ["truncate"] = new(P("length", "killwords", "end", "leeway"), (_, v, a) =>
        {
            string s = Py.Str(v), end = Py.Str(a.Get("end", "..."));
            long length = Py.ToLong(a.Get("length", 255L)), leeway = a.Get("leeway") is { } l ? Py.ToLong(l) : 5;
            if (s.Length <= length + leeway) return s;
            if (Py.Truthy(a.Get("killwords", false))) return s[..(int)Math.Max(0, length - end.Length)] + end;
            string cut = s[..(int)Math.Max(0, length - end.Length)];
            int space = cut.LastIndexOf(' ');
            return (space >= 0 ? cut[..space] : cut) + end;
        }),
        ["unique"] = new(P("case_sensitive", "attribute"), (_, v, a) =>
        {
            bool cs = Py.Truthy(a.Get("case_sensitive", false));
            var key = a.Get("attribute") is { } attr ? Getter(attr, null) : x => x;
            var seen = new List<object?>();
            var result = new List<object?>();
            foreach (var x in Py.Iterate(v))
            {
                var k = key(x);
                if (!cs && k is string s) k = s.ToLowerInvariant();
                if (seen.Any(y => Py.Eq(y, k))) continue;
                seen.Add(k);
                result.Add(x);
            }
            return result;
        }),
        ["wordcount"] = new(P(), (_, v, _) => (long)Regex.Matches(Py.Str(v), @"\w+").Count),
        ["batch"] = new(P("linecount", "fill_with"), (_, v, a) =>
        {
            long n = Py.ToLong(a.Required("linecount"));
            if (n <= 0) throw new JinjaError("batch size must be positive");
            var result = new List<object?>();
            List<object?>? tmp = null;
            foreach (var x in Py.Iterate(v))
            {
                tmp ??= new List<object?>();
                tmp.Add(x);
                if (tmp.Count == n) { result.Add(tmp); tmp = null; }
            }
            if (tmp is not null)
            {
                if (a.Has("fill_with")) while (tmp.Count < n) tmp.Add(a.Get("fill_with"));
                result.Add(tmp);
            }
            return result;
        }),
    };

    private static readonly Dictionary<string, string> Aliases = new() { ["d"] = "default", ["e"] = "escape", ["count"] = "length", ["forceescape"] = "escape" };

    private static string[] P(params string[] names) => names;

    public static bool Exists(string name) => All.ContainsKey(Aliases.GetValueOrDefault(name, name)) || name is "map" or "select" or "reject" or "selectattr" or "rejectattr" or "format" or "groupby";

    public static object? Apply(Interpreter it, string name, object? value, List<object?> args, Dictionary<string, object?> kwargs)
    {
        name = Aliases.GetValueOrDefault(name, name);
        switch (name)
        {
            case "format":
                {
                    if (args.Count > 0 && kwargs.Count > 0) throw new JinjaError("can't handle positional and keyword arguments at the same time");
                    return Formatting.Percent(it, Py.Str(value), kwargs.Count > 0 ? kwargs : new PyTuple(args));
                }
            case "map": return Map(it, value, args, kwargs);
            case "select" or "reject": return Select(it, value, args, kwargs, name == "select", attribute: false);
            case "selectattr" or "rejectattr": return Select(it, value, args, kwargs, name == "selectattr", attribute: true);
            case "groupby": return GroupBy(value, new Args("groupby", args, kwargs, "attribute", "default", "case_sensitive"));
        }
        if (!All.TryGetValue(name, out var entry)) throw new JinjaError($"No filter named '{name}'.");
        return entry.Body(it, value, new Args(name, args, kwargs, entry.Params));
    }

    public static object Length(object? v) => v switch
    {
        string s => (long)Py.Length(s),
        List<object?> l => (long)l.Count,
        Dictionary<string, object?> d => (long)d.Count,
        Undefined => 0L,
        Namespace ns => (long)ns.Attributes.Count,
        _ => throw new JinjaError($"object of type '{Py.TypeName(v)}' has no len()"),
    };

    /// <summary>jinja2's make_attrgetter: "a.b.0" looks up a, then b, then item 0 (item first), with an optional default for undefined.</summary>
    public static Func<object?, object?> Getter(object? attribute, object? fallback)
    {
        var parts = attribute switch
        {
            string s => s.Split('.').Select(p => long.TryParse(p, out long i) ? (object)i : p).ToArray(),
            long l => new object[] { l },
            _ => throw new JinjaError("attribute must be a string or an integer"),
        };
        return x =>
        {
            foreach (var p in parts) x = Members.GetItem(x, p);
            return x is Undefined && fallback is not null ? fallback : x;
        };
    }

    private static object? Map(Interpreter it, object? value, List<object?> args, Dictionary<string, object?> kwargs)
    {
        var items = Py.Iterate(value).ToList();
        if (args.Count == 0 && kwargs.TryGetValue("attribute", out var attr))
        {
            var getter = Getter(attr, kwargs.GetValueOrDefault("default"));
            return items.Select(getter).ToList();
        }
        if (args.Count == 0 || args[0] is not string filter) throw new JinjaError("map requires a filter name or attribute=");
        var rest = args.Skip(1).ToList();
        return items.Select(x => Apply(it, filter, x, rest, kwargs)).ToList();
    }

    private static object? Select(Interpreter it, object? value, List<object?> args, Dictionary<string, object?> kwargs, bool keep, bool attribute)
    {
        var items = Py.Iterate(value).ToList();
        Func<object?, object?> key = x => x;
        int next = 0;
        if (attribute)
        {
            if (args.Count == 0) throw new JinjaError("selectattr/rejectattr need an attribute");
            key = Getter(args[0], null);
            next = 1;
        }
        Func<object?, bool> test;
        if (args.Count > next)
        {
            string name = args[next] as string ?? throw new JinjaError("the test name must be a string");
            var testArgs = args.Skip(next + 1).ToList();
            test = x => JinjaTests.Apply(it, name, x, testArgs, kwargs);
        }
        else test = Py.Truthy;
        return items.Where(x => test(key(x)) == keep).ToList();
    }

    private static object? GroupBy(object? value, Args a)
    {
        var key = Getter(a.Required("attribute"), a.Get("default"));
        bool cs = Py.Truthy(a.Get("case_sensitive", false));
        var items = Py.ToList(value);
        var sorted = Sort(items, key, cs);
        var groups = new List<object?>();
        foreach (var x in sorted)
        {
            var k = key(x);
            if (!cs && k is string s) k = s.ToLowerInvariant();
            if (groups.Count > 0 && groups[^1] is List<object?> g && Py.Eq(g[0], k)) ((List<object?>)g[1]!).Add(x);
            else groups.Add(new List<object?> { k, new List<object?> { x } });
        }
        return groups;
    }

    private static List<T> Sort<T>(List<T> items, Func<T, object?> key, bool caseSensitive)
    {
        object? K(T x) { var k = key(x); return !caseSensitive && k is string s ? s.ToLowerInvariant() : k; }
        var keyed = items.Select((x, i) => (x, k: K(x), i)).ToList();
        keyed.Sort((p, q) => { int c = Py.Compare(p.k, q.k); return c != 0 ? c : p.i.CompareTo(q.i); });
        return keyed.Select(p => p.x).ToList();
    }

    private static object? MinMax(object? value, Args a, bool max)
    {
        var items = Py.ToList(value);
        if (items.Count == 0) return new Undefined($"No aggregated item, sequence was empty.");
        var key = a.Get("attribute") is { } attr ? Getter(attr, null) : x => x;
        bool cs = Py.Truthy(a.Get("case_sensitive", false));
        object? K(object? x) { var k = key(x); return !cs && k is string s ? s.ToLowerInvariant() : k; }
        var best = items[0];
        foreach (var x in items.Skip(1))
        {
            int c = Py.Compare(K(x), K(best));
            if (max ? c > 0 : c < 0) best = x;
        }
        return best;
    }

    private static string Indent(string s, object? width, bool first, bool blank)
    {
        string indent = width is string w ? w : new string(' ', (int)Math.Clamp(Py.ToLong(width), 0, 1000));
        s += "\n";
        string rv;
        var lines = Members.SplitLines(s, keepEnds: false);
        if (blank) rv = string.Join("\n" + indent, lines);
        else
        {
            rv = lines[0];
            if (lines.Count > 1) rv += "\n" + string.Join("\n", lines.Skip(1).Select(l => l.Length > 0 ? indent + l : l));
        }
        return first ? indent + rv : rv;
    }

    private static object? ToFloat(object? v) => v switch
    {
        double d => d,
        long l => (double)l,
        bool b => b ? 1.0 : 0.0,
        string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => d,
        _ => null,
    };

    private static object? ToInt(object? v, int radix)
    {
        switch (v)
        {
            case long l: return l;
            case bool b: return b ? 1L : 0L;
            case double d: return double.IsFinite(d) ? (long)Math.Truncate(d) : null;
            case string s:
                s = s.Trim().Replace("_", "");
                try { if (s.Length > 0) return radix == 10 ? long.Parse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture) : Convert.ToInt64(s, radix); }
                catch (Exception e) when (e is FormatException or OverflowException or ArgumentException) { }
                return double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double f) && double.IsFinite(f) ? (long)Math.Truncate(f) : null;
            default: return null;
        }
    }
}
