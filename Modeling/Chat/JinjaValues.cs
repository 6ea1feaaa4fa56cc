using System.Globalization;
using System.Text;

namespace ShardPipe.Modeling.Chat;

/// <summary>
/// Jinja's values are Python's. Here: <c>null</c> is None, <see cref="bool"/>, <see cref="long"/> (int), <see cref="double"/>
/// (float), <see cref="string"/>, <see cref="List{T}"/> of object (list and tuple), <see cref="Dictionary{TKey,TValue}"/>
/// with string keys in insertion order (dict), <see cref="Undefined"/>, <see cref="Namespace"/> and callables
/// (<see cref="IJinjaCallable"/>). This class holds Python's rules over them: truth, str/repr, equality, ordering.
/// </summary>
public static class Py
{
    public static bool Truthy(object? v) => v switch
    {
        null => false,
        Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        Dictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        Undefined => "Undefined",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        PyTuple => "tuple",
        List<object?> => "list",
        Dictionary<string, object?> => "dict",
        Namespace => "Namespace",
        LoopContext => "LoopContext",
        IJinjaCallable => "function",
        _ => v.GetType().Name,
    };

    /// <summary>Python's <c>str(v)</c> (what <c>{{ v }}</c> prints).</summary>
    public static string Str(object? v) => v switch
    {
        string s => s,
        Undefined => "",
        _ => Repr(v),
    };

    /// <summary>Python's <c>repr(v)</c> (how lists and dicts print their items).</summary>
    public static string Repr(object? v)
    {
        var sb = new StringBuilder();
        Repr(v, sb, 0);
        return sb.ToString();
    }

    private static void Repr(object? v, StringBuilder sb, int depth)
    {
        if (depth > 100) throw new JinjaError("a value nests more than 100 levels deep");
        switch (v)
        {
            case null: sb.Append("None"); break;
            case Undefined: break;
            case bool b: sb.Append(b ? "True" : "False"); break;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d: sb.Append(FloatRepr(d)); break;
            case string s: StrRepr(s, sb); break;
            case PyTuple tuple:
                sb.Append('(');
                for (int i = 0; i < tuple.Count; i++) { if (i > 0) sb.Append(", "); Repr(tuple[i], sb, depth + 1); }
                sb.Append(tuple.Count == 1 ? ",)" : ")");
                break;
            case List<object?> list:
                sb.Append('[');
                for (int i = 0; i < list.Count; i++) { if (i > 0) sb.Append(", "); Repr(list[i], sb, depth + 1); }
                sb.Append(']');
                break;
            case Dictionary<string, object?> dict:
                sb.Append('{');
                bool first = true;
                foreach (var (k, x) in dict) { if (!first) sb.Append(", "); first = false; StrRepr(k, sb); sb.Append(": "); Repr(x, sb, depth + 1); }
                sb.Append('}');
                break;
            case Namespace ns: sb.Append("<Namespace ").Append(Repr(ns.Attributes)).Append('>'); break;
            default: sb.Append('<').Append(TypeName(v)).Append('>'); break;
        }
    }

    private static void StrRepr(string s, StringBuilder sb)
    {
        char quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        sb.Append(quote);
        foreach (char c in s)
        {
            if (c == quote || c == '\\') sb.Append('\\').Append(c);
            else if (c == '\n') sb.Append("\\n");
            else if (c == '\r') sb.Append("\\r");
            else if (c == '\t') sb.Append("\\t");
            else if (c < 0x20 || c == 0x7f) sb.Append("\\x").Append(((int)c).ToString("x2"));
            else sb.Append(c);
        }
        sb.Append(quote);
    }

    /// <summary>Python's <c>repr(float)</c>: the shortest round-trip digits, positional for exponents -4..15.</summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        // Shortest round-trip digits: "R" gives them; split into sign, digits and exponent.
        string shortest = d.ToString("R", CultureInfo.InvariantCulture);
        bool negative = shortest.StartsWith('-');
        if (negative) shortest = shortest[1..];
        int exp;
        string mantissa = shortest;
        int e = shortest.IndexOfAny(new[] { 'E', 'e' });
        if (e >= 0) { exp = int.Parse(shortest[(e + 1)..], CultureInfo.InvariantCulture); mantissa = shortest[..e]; } else exp = 0;
        int dot = mantissa.IndexOf('.');
        string intPart = dot >= 0 ? mantissa[..dot] : mantissa, frac = dot >= 0 ? mantissa[(dot + 1)..] : "";
        string digits = (intPart + frac).TrimStart('0');
        int leadingZeros = (intPart + frac).Length - (intPart + frac).TrimStart('0').Length;
        int pointPos = intPart.Length + exp - leadingZeros; // digits[0] is at 10^(pointPos-1)
        digits = digits.TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        int decExp = pointPos - 1;
        string body;
        if (decExp < -4 || decExp >= 16)
        {
            body = digits[..1] + (digits.Length > 1 ? "." + digits[1..] : "") + "e" + (decExp < 0 ? "-" : "+") + Math.Abs(decExp).ToString("00", CultureInfo.InvariantCulture);
        }
        else if (pointPos <= 0) body = "0." + new string('0', -pointPos) + digits;
        else if (pointPos >= digits.Length) body = digits + new string('0', pointPos - digits.Length) + ".0";
        else body = digits[..pointPos] + "." + digits[pointPos..];
        return (negative ? "-" : "") + body;
    }

    /// <summary>Python's <c>==</c> (1 == 1.0 == True; lists and dicts by value).</summary>
    public static bool Eq(object? a, object? b)
    {
        if (a is Undefined || b is Undefined) return a is Undefined && b is Undefined;
        if (a is null || b is null) return a is null && b is null;
        if (IsNumber(a) && IsNumber(b))
        {
            if (a is double || b is double) return ToDouble(a) == ToDouble(b);
            return ToLong(a) == ToLong(b);
        }
        return (a, b) switch
        {
            (string x, string y) => x == y,
            (List<object?> x, List<object?> y) => x.Count == y.Count && x.Zip(y).All(p => Eq(p.First, p.Second)),
            (Dictionary<string, object?> x, Dictionary<string, object?> y) => x.Count == y.Count && x.All(kv => y.TryGetValue(kv.Key, out var o) && Eq(kv.Value, o)),
            _ => ReferenceEquals(a, b),
        };
    }

    public static bool IsNumber(object? v) => v is long or double or bool;

    public static double ToDouble(object? v) => v switch { long l => l, double d => d, bool b => b ? 1 : 0, _ => throw new JinjaError($"'{TypeName(v)}' is not a number") };
    public static long ToLong(object? v) => v switch { long l => l, bool b => b ? 1 : 0, double d => (long)d, _ => throw new JinjaError($"'{TypeName(v)}' is not an integer") };

    /// <summary>Python's ordering (<c>&lt;</c>); strings by code point, numbers by value, lists element-wise.</summary>
    public static int Compare(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            if (a is double || b is double) return ToDouble(a).CompareTo(ToDouble(b));
            return ToLong(a).CompareTo(ToLong(b));
        }
        if (a is string x && b is string y) return CompareCodePoints(x, y);
        if (a is List<object?> la && b is List<object?> lb)
        {
            for (int i = 0; i < Math.Min(la.Count, lb.Count); i++)
            {
                if (Eq(la[i], lb[i])) continue;
                return Compare(la[i], lb[i]);
            }
            return la.Count.CompareTo(lb.Count);
        }
        throw new JinjaError($"'<' not supported between instances of '{TypeName(a)}' and '{TypeName(b)}'");
    }

    public static int CompareCodePoints(string x, string y)
    {
        int i = 0, j = 0;
        while (i < x.Length && j < y.Length)
        {
            int cx = CodePointAt(x, i), cy = CodePointAt(y, j);
            if (cx != cy) return cx.CompareTo(cy);
            i += cx > 0xFFFF ? 2 : 1;
            j += cy > 0xFFFF ? 2 : 1;
        }
        return (x.Length - i).CompareTo(y.Length - j);
    }

    private static int CodePointAt(string s, int i) =>
        char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? char.ConvertToUtf32(s[i], s[i + 1]) : s[i];

    /// <summary>The string as Python sees it: one element per code point (astral characters are one, not two).</summary>
    public static string[] CodePoints(string s)
    {
        var list = new List<string>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { list.Add(s.Substring(i, 2)); i++; }
            else list.Add(s[i].ToString());
        }
        return list.ToArray();
    }

    public static int Length(string s)
    {
        int n = 0;
        for (int i = 0; i < s.Length; i++) if (!char.IsLowSurrogate(s[i]) || i == 0 || !char.IsHighSurrogate(s[i - 1])) n++;
        return n;
    }

    /// <summary>Python's whitespace (<c>str.isspace</c>): Unicode spaces and the separators \x1c-\x1f.</summary>
    public static bool IsSpace(char c) => char.IsWhiteSpace(c) || c is >= '\x1c' and <= '\x1f';

    public static string Strip(string s, string? chars, bool left = true, bool right = true)
    {
        Func<char, bool> drop = chars is null ? IsSpace : c => chars.Contains(c);
        int a = 0, b = s.Length;
        if (left) while (a < b && drop(s[a])) a++;
        if (right) while (b > a && drop(s[b - 1])) b--;
        return s[a..b];
    }

    /// <summary>Iterates a value as Python's <c>for x in v</c> does (a dict gives its keys, a string its characters).</summary>
    public static IEnumerable<object?> Iterate(object? v) => v switch
    {
        List<object?> l => l,
        Dictionary<string, object?> d => d.Keys.Cast<object?>(),
        string s => CodePoints(s),
        Undefined => Array.Empty<object?>(),
        _ => throw new JinjaError($"'{TypeName(v)}' object is not iterable"),
    };

    public static List<object?> ToList(object? v) => Iterate(v).ToList();

    /// <summary>Python's <c>in</c>.</summary>
    public static bool Contains(object? container, object? item) => container switch
    {
        string s => item is string sub ? s.Contains(sub, StringComparison.Ordinal) : throw new JinjaError($"'in <string>' requires string as left operand, not {TypeName(item)}"),
        List<object?> l => l.Any(x => Eq(x, item)),
        Dictionary<string, object?> d => item is string k && d.ContainsKey(k),
        Undefined => false,
        Namespace ns => item is string k && ns.Attributes.ContainsKey(k),
        _ => throw new JinjaError($"argument of type '{TypeName(container)}' is not iterable"),
    };

    /// <summary>A JSON value as templates see it (objects as dicts, arrays as lists, integers as int).</summary>
    public static object? FromJson(System.Text.Json.Nodes.JsonNode? node) => node switch
    {
        null => null,
        System.Text.Json.Nodes.JsonObject o => o.ToDictionary(kv => kv.Key, kv => FromJson(kv.Value)),
        System.Text.Json.Nodes.JsonArray a => a.Select(FromJson).ToList(),
        System.Text.Json.Nodes.JsonValue v => v.GetValueKind() switch
        {
            System.Text.Json.JsonValueKind.String => v.GetValue<string>(),
            System.Text.Json.JsonValueKind.True => true,
            System.Text.Json.JsonValueKind.False => false,
            System.Text.Json.JsonValueKind.Number => long.TryParse(v.ToJsonString(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long p) ? (object)p
                : double.Parse(v.ToJsonString(), CultureInfo.InvariantCulture),
            _ => null,
        },
        _ => null,
    };
}

/// <summary>A Python tuple: a list that prints with parentheses (tuple literals, dict items, dictsort's pairs).</summary>
public sealed class PyTuple : List<object?>
{
    public PyTuple() { }
    public PyTuple(IEnumerable<object?> items) : base(items) { }
}

/// <summary>
/// jinja2's <c>Undefined</c>: a missing variable, key or attribute. Prints as nothing, is false, iterates as empty, has
/// length 0; using it further (an attribute of it, calling it, arithmetic) is an error naming what was missing.
/// </summary>
public sealed class Undefined
{
    public string Hint { get; }
    public Undefined(string hint) => Hint = hint;
    public JinjaError Error() => new(Hint);
}

/// <summary>jinja2's <c>namespace(...)</c>: attributes that <c>{% set ns.x = … %}</c> may change from inside loops.</summary>
public sealed class Namespace
{
    public Dictionary<string, object?> Attributes { get; } = new(StringComparer.Ordinal);
}

/// <summary>Something a template can call: a global, a filter-less function, a bound method, a macro.</summary>
public interface IJinjaCallable
{
    object? Call(Interpreter interpreter, List<object?> args, Dictionary<string, object?> kwargs);
}

/// <summary>A callable over a plain function of (interpreter, args, kwargs).</summary>
public sealed class JinjaFunction : IJinjaCallable
{
    private readonly Func<Interpreter, List<object?>, Dictionary<string, object?>, object?> _f;
    public string Name { get; }
    public JinjaFunction(string name, Func<Interpreter, List<object?>, Dictionary<string, object?>, object?> f) { Name = name; _f = f; }
    public object? Call(Interpreter interpreter, List<object?> args, Dictionary<string, object?> kwargs) => _f(interpreter, args, kwargs);
}

/// <summary>A failure while rendering (an undefined used, a type error, raise_exception); the interpreter adds the line.</summary>
public sealed class JinjaError : Exception
{
    public JinjaError(string message) : base(message) { }
}

/// <summary>Arguments by position or keyword, as Python binds them to a signature.</summary>
public sealed class Args
{
    private readonly string _function;
    private readonly List<object?> _args;
    private readonly Dictionary<string, object?> _kwargs;
    private readonly string[] _names;

    public Args(string function, List<object?> args, Dictionary<string, object?> kwargs, params string[] names)
    {
        _function = function;
        _args = args;
        _kwargs = kwargs;
        _names = names;
        if (args.Count > names.Length) throw new JinjaError($"{function}() takes at most {names.Length} arguments ({args.Count} given)");
        foreach (var k in kwargs.Keys)
        {
            int i = Array.IndexOf(names, k);
            if (i < 0) throw new JinjaError($"{function}() got an unexpected keyword argument '{k}'");
            if (i < args.Count) throw new JinjaError($"{function}() got multiple values for argument '{k}'");
        }
    }

    public bool Has(string name)
    {
        int i = Array.IndexOf(_names, name);
        return i < _args.Count || _kwargs.ContainsKey(name);
    }

    public object? Get(string name, object? fallback = null)
    {
        int i = Array.IndexOf(_names, name);
        if (i < _args.Count) return _args[i];
        return _kwargs.TryGetValue(name, out var v) ? v : fallback;
    }

    public object? Required(string name) => Has(name) ? Get(name) : throw new JinjaError($"{_function}() missing required argument '{name}'");
}
