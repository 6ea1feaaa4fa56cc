using System.Globalization;
using System.Text;

namespace ShardPipe.Modeling.Chat;

/// <summary>
/// Attribute and item lookup as jinja2's sandbox does them: <c>a.b</c> tries the attribute (a method of str, dict or
/// list, a namespace's or the loop's attribute) then the item; <c>a['b']</c> the item then the attribute; a miss is
/// <see cref="Undefined"/>. Methods that change a list or dict are refused (ImmutableSandboxedEnvironment).
/// </summary>
public static class Members
{
    private static readonly HashSet<string> Mutating = new() { "append", "extend", "insert", "pop", "popitem", "remove", "clear", "update", "setdefault", "sort", "reverse", "__setitem__", "__delitem__" };

    public static object? GetAttr(object? obj, string name)
    {
        switch (obj)
        {
            case Undefined u: throw u.Error();
            case Dictionary<string, object?> d:
                if (DictMethod(d, name) is { } dm) return dm;
                if (Mutating.Contains(name)) return Unsafe(obj, name);
                return d.TryGetValue(name, out var v) ? v : new Undefined($"'dict object' has no attribute '{name}'");
            case string s:
                return (object?)StringMethod(s, name) ?? new Undefined($"'str object' has no attribute '{name}'");
            case List<object?> l:
                if (Mutating.Contains(name)) return Unsafe(obj, name);
                return (object?)ListMethod(l, name) ?? new Undefined($"'list object' has no attribute '{name}'");
            case Namespace ns:
                return ns.Attributes.TryGetValue(name, out var a) ? a : new Undefined($"'Namespace' object has no attribute '{name}'");
            case LoopContext loop: return loop.Get(name);
            case null: return new Undefined($"'None' has no attribute '{name}'");
            case double dbl when name is "real": return dbl;
            case long lng when name is "real": return lng;
            default: return new Undefined($"'{Py.TypeName(obj)} object' has no attribute '{name}'");
        }
    }

    private static Undefined Unsafe(object? obj, string name) => new($"access to attribute '{name}' of '{Py.TypeName(obj)}' object is unsafe.");

    public static object? GetItem(object? obj, object? key)
    {
        switch (obj)
        {
            case Undefined u: throw u.Error();
            case Dictionary<string, object?> d:
                if (key is string k) return d.TryGetValue(k, out var v) ? v : DictMethod(d, k) ?? (object)new Undefined($"'dict object' has no attribute '{k}'");
                return new Undefined($"'dict object' has no attribute {Py.Repr(key)}");
            case List<object?> l when key is long or bool:
                {
                    long i = Py.ToLong(key);
                    if (i < 0) i += l.Count;
                    return i >= 0 && i < l.Count ? l[(int)i] : new Undefined($"list object has no element {key}");
                }
            case string s when key is long or bool:
                {
                    var cps = Py.CodePoints(s);
                    long i = Py.ToLong(key);
                    if (i < 0) i += cps.Length;
                    return i >= 0 && i < cps.Length ? cps[i] : new Undefined($"str object has no element {key}");
                }
            case Namespace or LoopContext when key is string name: return GetAttr(obj, name);
            case null: return new Undefined($"'None' has no attribute {Py.Repr(key)}");
            default:
                if (key is string attr) return GetAttr(obj, attr);
                return new Undefined($"'{Py.TypeName(obj)} object' has no element {Py.Repr(key)}");
        }
    }

    /// <summary>Python's <c>x[start:stop:step]</c> of a list or string (over code points).</summary>
    public static object? Slice(object? obj, object? start, object? stop, object? step)
    {
        if (obj is Undefined u) throw u.Error();
        long? Int(object? x, string what) => x switch { null => null, long or bool => Py.ToLong(x), _ => throw new JinjaError($"slice {what} must be an integer or None") };
        long st = Int(step, "step") ?? 1;
        if (st == 0) throw new JinjaError("slice step cannot be zero");
        IList<object?> seq = obj switch
        {
            List<object?> l => l,
            string s => Py.CodePoints(s),
            _ => throw new JinjaError($"'{Py.TypeName(obj)}' object is not subscriptable"),
        };
        int n = seq.Count;
        long Clamp(long? v, long fallback)
        {
            if (v is null) return fallback;
            long x = v.Value < 0 ? v.Value + n : v.Value;
            return st > 0 ? Math.Clamp(x, 0, n) : Math.Clamp(x, -1, n - 1);
        }
        long a = Clamp(Int(start, "start"), st > 0 ? 0 : n - 1), b = Clamp(Int(stop, "stop"), st > 0 ? n : -1);
        var result = new List<object?>();
        for (long i = a; st > 0 ? i < b : i > b; i += st) result.Add(seq[(int)i]);
        return obj is string ? string.Concat(result.Cast<string>()) : result;
    }

    private static JinjaFunction Method(string name, Func<List<object?>, Dictionary<string, object?>, object?> f) => new(name, (_, a, k) => f(a, k));

    private static JinjaFunction? DictMethod(Dictionary<string, object?> d, string name) => name switch
    {
        "items" => Method("dict.items", (_, _) => d.Select(kv => (object?)new PyTuple { kv.Key, kv.Value }).ToList()),
        "keys" => Method("dict.keys", (_, _) => d.Keys.Cast<object?>().ToList()),
        "values" => Method("dict.values", (_, _) => d.Values.ToList()),
        "get" => Method("dict.get", (a, k) =>
        {
            var args = new Args("get", a, k, "key", "default");
            return args.Required("key") is string key && d.TryGetValue(key, out var v) ? v : args.Get("default");
        }),
        "copy" => Method("dict.copy", (_, _) => new Dictionary<string, object?>(d)),
        _ => null,
    };

    private static JinjaFunction? ListMethod(List<object?> l, string name) => name switch
    {
        "index" => Method("list.index", (a, k) =>
        {
            var x = new Args("index", a, k, "value").Required("value");
            int i = l.FindIndex(v => Py.Eq(v, x));
            return i >= 0 ? (long)i : throw new JinjaError($"{Py.Repr(x)} is not in list");
        }),
        "count" => Method("list.count", (a, k) => (long)l.Count(v => Py.Eq(v, new Args("count", a, k, "value").Required("value")))),
        "copy" => Method("list.copy", (_, _) => l.ToList()),
        _ => null,
    };

    private static string Str(object? v, string function) => v as string ?? throw new JinjaError($"{function}() argument must be str, not {Py.TypeName(v)}");

    /// <summary>The Python string methods templates use.</summary>
    private static JinjaFunction? StringMethod(string s, string name) => name switch
    {
        "startswith" or "endswith" => Method("str." + name, (a, k) =>
        {
            var prefix = new Args(name, a, k, "prefix").Required("prefix");
            var options = prefix is List<object?> l ? l.Select(x => Str(x, name)) : new[] { Str(prefix, name) };
            return options.Any(p => name == "startswith" ? s.StartsWith(p, StringComparison.Ordinal) : s.EndsWith(p, StringComparison.Ordinal));
        }),
        "strip" or "lstrip" or "rstrip" => Method("str." + name, (a, k) =>
        {
            var chars = new Args(name, a, k, "chars").Get("chars") as string;
            return Py.Strip(s, chars, left: name != "rstrip", right: name != "lstrip");
        }),
        "upper" => Method("str.upper", (_, _) => s.ToUpperInvariant()),
        "lower" => Method("str.lower", (_, _) => s.ToLowerInvariant()),
        "casefold" => Method("str.casefold", (_, _) => s.ToLowerInvariant()),
        "title" => Method("str.title", (_, _) => Title(s)),
        "capitalize" => Method("str.capitalize", (_, _) => s.Length == 0 ? s : s[..1].ToUpperInvariant() + s[1..].ToLowerInvariant()),
        "swapcase" => Method("str.swapcase", (_, _) => string.Concat(s.Select(c => char.IsUpper(c) ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c)))),
        "split" or "rsplit" => Method("str." + name, (a, k) =>
        {
            var args = new Args(name, a, k, "sep", "maxsplit");
            return Split(s, args.Get("sep") as string, args.Get("maxsplit") is { } m ? Py.ToLong(m) : -1, name == "rsplit");
        }),
        "splitlines" => Method("str.splitlines", (a, k) => SplitLines(s, Py.Truthy(new Args("splitlines", a, k, "keepends").Get("keepends", false))).Cast<object?>().ToList()),
        "replace" => Method("str.replace", (a, k) =>
        {
            var args = new Args("replace", a, k, "old", "new", "count");
            return Replace(s, Str(args.Required("old"), "replace"), Str(args.Required("new"), "replace"), args.Get("count") is { } c ? Py.ToLong(c) : -1);
        }),
        "find" or "rfind" or "index" or "rindex" => Method("str." + name, (a, k) =>
        {
            string sub = Str(new Args(name, a, k, "sub").Required("sub"), name);
            int i = name is "find" or "index" ? s.IndexOf(sub, StringComparison.Ordinal) : s.LastIndexOf(sub, StringComparison.Ordinal);
            if (i < 0 && name.EndsWith("index")) throw new JinjaError("substring not found");
            return i < 0 ? -1L : (long)Py.Length(s[..i]);
        }),
        "count" => Method("str.count", (a, k) =>
        {
            string sub = Str(new Args("count", a, k, "sub").Required("sub"), "count");
            if (sub.Length == 0) return (long)Py.Length(s) + 1;
            long n = 0;
            for (int i = s.IndexOf(sub, StringComparison.Ordinal); i >= 0; i = s.IndexOf(sub, i + sub.Length, StringComparison.Ordinal)) n++;
            return n;
        }),
        "join" => Method("str.join", (a, k) => string.Join(s, Py.Iterate(new Args("join", a, k, "iterable").Required("iterable")).Select(x => Str(x, "join")))),
        "format" => Method("str.format", (a, k) => Formatting.Format(s, a, k)),
        "removeprefix" => Method("str.removeprefix", (a, k) => { string p = Str(new Args(name, a, k, "prefix").Required("prefix"), name); return s.StartsWith(p, StringComparison.Ordinal) ? s[p.Length..] : s; }),
        "removesuffix" => Method("str.removesuffix", (a, k) => { string p = Str(new Args(name, a, k, "suffix").Required("suffix"), name); return p.Length > 0 && s.EndsWith(p, StringComparison.Ordinal) ? s[..^p.Length] : s; }),
        "partition" or "rpartition" => Method("str." + name, (a, k) =>
        {
            string sep = Str(new Args(name, a, k, "sep").Required("sep"), name);
            int i = name == "partition" ? s.IndexOf(sep, StringComparison.Ordinal) : s.LastIndexOf(sep, StringComparison.Ordinal);
            if (i < 0) return name == "partition" ? new PyTuple { s, "", "" } : new PyTuple { "", "", s };
            return new PyTuple { s[..i], sep, s[(i + sep.Length)..] };
        }),
        "isdigit" or "isnumeric" or "isdecimal" => Method("str." + name, (_, _) => s.Length > 0 && s.All(char.IsDigit)),
        "isalpha" => Method("str.isalpha", (_, _) => s.Length > 0 && s.All(char.IsLetter)),
        "isalnum" => Method("str.isalnum", (_, _) => s.Length > 0 && s.All(char.IsLetterOrDigit)),
        "isspace" => Method("str.isspace", (_, _) => s.Length > 0 && s.All(Py.IsSpace)),
        "islower" => Method("str.islower", (_, _) => s.Any(char.IsLetter) && !s.Any(char.IsUpper)),
        "isupper" => Method("str.isupper", (_, _) => s.Any(char.IsLetter) && !s.Any(char.IsLower)),
        "zfill" => Method("str.zfill", (a, k) =>
        {
            int width = (int)Py.ToLong(new Args("zfill", a, k, "width").Required("width"));
            int len = Py.Length(s);
            if (len >= width) return s;
            bool sign = s.Length > 0 && s[0] is '+' or '-';
            return sign ? s[0] + new string('0', width - len) + s[1..] : new string('0', width - len) + s;
        }),
        "center" or "ljust" or "rjust" => Method("str." + name, (a, k) =>
        {
            var args = new Args(name, a, k, "width", "fillchar");
            int width = (int)Math.Min(Py.ToLong(args.Required("width")), 1_000_000);
            string fill = args.Get("fillchar") as string ?? " ";
            int len = Py.Length(s);
            if (len >= width) return s;
            int total = width - len;
            int left = name switch { "ljust" => 0, "rjust" => total, _ => total / 2 + (total & width & 1) };
            return string.Concat(Enumerable.Repeat(fill, left)) + s + string.Concat(Enumerable.Repeat(fill, total - left));
        }),
        _ => null,
    };

    /// <summary>Python's <c>str.title()</c>: a cased character after an uncased one starts a word.</summary>
    public static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool previousCased = false;
        foreach (char c in s)
        {
            bool cased = char.IsUpper(c) || char.IsLower(c) || char.GetUnicodeCategory(c) == UnicodeCategory.TitlecaseLetter;
            sb.Append(cased ? previousCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c) : c);
            previousCased = cased;
        }
        return sb.ToString();
    }

    public static List<object?> Split(string s, string? sep, long maxSplit, bool fromRight)
    {
        var parts = new List<string>();
        if (sep is null)
        {
            // Runs of whitespace separate; leading and trailing whitespace give no empty parts.
            var words = new List<(int Start, int End)>();
            int i = 0;
            while (i < s.Length)
            {
                while (i < s.Length && Py.IsSpace(s[i])) i++;
                if (i >= s.Length) break;
                int start = i;
                while (i < s.Length && !Py.IsSpace(s[i])) i++;
                words.Add((start, i));
            }
            if (maxSplit < 0 || words.Count <= maxSplit + 1) return words.Select(w => (object?)s[w.Start..w.End]).ToList();
            if (!fromRight)
            {
                var head = words.Take((int)maxSplit).Select(w => (object?)s[w.Start..w.End]).ToList();
                head.Add(Py.Strip(s[words[(int)maxSplit].Start..], null, left: false));
                return head;
            }
            var tail = words.Skip(words.Count - (int)maxSplit).Select(w => (object?)s[w.Start..w.End]).ToList();
            tail.Insert(0, Py.Strip(s[..words[words.Count - (int)maxSplit - 1].End], null, right: false));
            return tail;
        }
        if (sep.Length == 0) throw new JinjaError("empty separator");
        var all = s.Split(sep);
        if (maxSplit < 0 || all.Length <= maxSplit + 1) return all.Cast<object?>().ToList();
        if (!fromRight)
        {
            var head = all.Take((int)maxSplit).Cast<object?>().ToList();
            head.Add(string.Join(sep, all.Skip((int)maxSplit)));
            return head;
        }
        var rest = all.Skip(all.Length - (int)maxSplit).Cast<object?>().ToList();
        rest.Insert(0, string.Join(sep, all.Take(all.Length - (int)maxSplit)));
        return rest;
    }

    /// <summary>Python's <c>str.splitlines</c> (\n, \r\n, \r, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029).</summary>
    public static List<string> SplitLines(string s, bool keepEnds)
    {
        var lines = new List<string>();
        int start = 0, i = 0;
        while (i < s.Length)
        {
            char c = s[i];
            if (c is '\n' or '\r' or '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x85' or '\u2028' or '\u2029')
            {
                int end = i;
                i += c == '\r' && i + 1 < s.Length && s[i + 1] == '\n' ? 2 : 1;
                lines.Add(keepEnds ? s[start..i] : s[start..end]);
                start = i;
            }
            else i++;
        }
        if (start < s.Length) lines.Add(s[start..]);
        return lines;
    }

    public static string Replace(string s, string old, string @new, long count)
    {
        if (count < 0) return old.Length == 0 ? string.Join(@new, Py.CodePoints(s).Prepend("").Append("")) : s.Replace(old, @new, StringComparison.Ordinal);
        var sb = new StringBuilder();
        int pos = 0;
        for (long n = 0; n < count; n++)
        {
            int i = s.IndexOf(old, pos, StringComparison.Ordinal);
            if (i < 0) break;
            sb.Append(s, pos, i - pos).Append(@new);
            pos = i + old.Length;
            if (old.Length == 0) { if (pos < s.Length) sb.Append(s[pos]); pos++; if (pos > s.Length) break; }
        }
        if (pos <= s.Length) sb.Append(s, pos, s.Length - pos);
        return sb.ToString();
    }
}
