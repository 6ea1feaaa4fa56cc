using System.Globalization;
using System.Text;

namespace ShardPipe.Modeling.Chat;

/// <summary>Python's binary operators (<c>+ - * / // % **</c>) and jinja2's <c>~</c>, with sizes counted before strings or lists are built.</summary>
public static class Operators
{
    public static object? Binary(Interpreter it, string op, object? l, object? r)
    {
        if (op == "~")
        {
            string a = Py.Str(l), b = Py.Str(r);
            it.Spend(a.Length + b.Length);
            return a + b;
        }
        if (l is Undefined u) throw u.Error();
        if (r is Undefined v) throw v.Error();
        switch (op)
        {
            case "+":
                if (l is string s1 && r is string s2) { it.Spend(s1.Length + s2.Length); return s1 + s2; }
                if (l is List<object?> l1 && r is List<object?> l2) { it.Spend(l1.Count + l2.Count); return l1.Concat(l2).ToList(); }
                if (Py.IsNumber(l) && Py.IsNumber(r)) return Arith(l, r, (a, b) => checked(a + b), (a, b) => a + b);
                if (l is string) throw new JinjaError($"can only concatenate str (not \"{Py.TypeName(r)}\") to str");
                if (l is List<object?>) throw new JinjaError($"can only concatenate list (not \"{Py.TypeName(r)}\") to list");
                break;
            case "-":
                if (Py.IsNumber(l) && Py.IsNumber(r)) return Arith(l, r, (a, b) => checked(a - b), (a, b) => a - b);
                break;
            case "*":
                if (l is string or List<object?> && r is long or bool) return Repeat(it, l, Py.ToLong(r));
                if (r is string or List<object?> && l is long or bool) return Repeat(it, r, Py.ToLong(l));
                if (Py.IsNumber(l) && Py.IsNumber(r)) return Arith(l, r, (a, b) => checked(a * b), (a, b) => a * b);
                break;
            case "/":
                if (Py.IsNumber(l) && Py.IsNumber(r))
                {
                    double d = Py.ToDouble(r);
                    if (d == 0) throw new JinjaError("division by zero");
                    return Py.ToDouble(l) / d;
                }
                break;
            case "//":
                if (Py.IsNumber(l) && Py.IsNumber(r))
                {
                    if (Py.ToDouble(r) == 0) throw new JinjaError("integer division or modulo by zero");
                    if (l is double || r is double) return Math.Floor(Py.ToDouble(l) / Py.ToDouble(r));
                    long a = Py.ToLong(l), b = Py.ToLong(r);
                    long q = a / b;
                    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
                }
                break;
            case "%":
                if (l is string fmt) return Formatting.Percent(it, fmt, r);
                if (Py.IsNumber(l) && Py.IsNumber(r))
                {
                    if (Py.ToDouble(r) == 0) throw new JinjaError("integer division or modulo by zero");
                    if (l is double || r is double)
                    {
                        double a = Py.ToDouble(l), b = Py.ToDouble(r), m = a % b;
                        return m != 0 && (m < 0) != (b < 0) ? m + b : m;
                    }
                    long x = Py.ToLong(l), y = Py.ToLong(r), mod = x % y;
                    return mod != 0 && (mod < 0) != (y < 0) ? mod + y : mod;
                }
                break;
            case "**":
                if (Py.IsNumber(l) && Py.IsNumber(r))
                {
                    if (l is double || r is double || Py.ToLong(r) < 0) return Math.Pow(Py.ToDouble(l), Py.ToDouble(r));
                    long b = Py.ToLong(l), e = Py.ToLong(r), result = 1;
                    if (e > 64 && Math.Abs(b) > 1) throw new JinjaError("integer power too large");
                    for (long i = 0; i < e; i++) result = checked(result * b);
                    return result;
                }
                break;
        }
        throw new JinjaError($"unsupported operand type(s) for {op}: '{Py.TypeName(l)}' and '{Py.TypeName(r)}'");
    }

    private static object Arith(object? l, object? r, Func<long, long, long> ints, Func<double, double, double> floats)
    {
        if (l is double || r is double) return floats(Py.ToDouble(l), Py.ToDouble(r));
        try { return ints(Py.ToLong(l), Py.ToLong(r)); }
        catch (OverflowException) { throw new JinjaError("integer overflow (past 64 bits)"); }
    }

    private static object Repeat(Interpreter it, object? seq, long n)
    {
        if (n <= 0) return seq is string ? "" : new List<object?>();
        if (seq is string s)
        {
            it.Spend(s.Length * Math.Min(n, long.MaxValue / Math.Max(1, s.Length)));
            return new StringBuilder(s.Length * (int)n).Insert(0, s, (int)n).ToString();
        }
        var l = (List<object?>)seq!;
        it.Spend(l.Count * Math.Min(n, long.MaxValue / Math.Max(1, l.Count)));
        var result = new List<object?>();
        for (long i = 0; i < n; i++) result.AddRange(l);
        return result;
    }
}

/// <summary>Python's <c>str.format</c> and <c>%</c> formatting, for the conversions templates use.</summary>
public static class Formatting
{
    public static string Format(string fmt, List<object?> args, Dictionary<string, object?> kwargs)
    {
        var sb = new StringBuilder();
        int auto = 0;
        for (int i = 0; i < fmt.Length; i++)
        {
            char c = fmt[i];
            if (c == '{' && i + 1 < fmt.Length && fmt[i + 1] == '{') { sb.Append('{'); i++; continue; }
            if (c == '}' && i + 1 < fmt.Length && fmt[i + 1] == '}') { sb.Append('}'); i++; continue; }
            if (c != '{') { sb.Append(c); continue; }
            int end = fmt.IndexOf('}', i);
            if (end < 0) throw new JinjaError("Single '{' encountered in format string");
            string field = fmt[(i + 1)..end];
            string spec = "", conv = "";
            int colon = field.IndexOf(':');
            if (colon >= 0) { spec = field[(colon + 1)..]; field = field[..colon]; }
            int bang = field.IndexOf('!');
            if (bang >= 0) { conv = field[(bang + 1)..]; field = field[..bang]; }
            object? value;
            if (field.Length == 0) value = auto < args.Count ? args[auto++] : throw new JinjaError("Replacement index out of range for positional args tuple");
            else if (int.TryParse(field, out int idx)) value = idx < args.Count ? args[idx] : throw new JinjaError($"Replacement index {idx} out of range");
            else
            {
                var parts = field.Split('.');
                value = kwargs.TryGetValue(parts[0], out var kv) ? kv : throw new JinjaError($"'{parts[0]}'");
                foreach (var p in parts.Skip(1)) value = Members.GetAttr(value, p);
            }
            string text = conv == "r" ? Py.Repr(value) : FormatSpec(value, spec);
            sb.Append(text);
            i = end;
        }
        return sb.ToString();
    }

    /// <summary>A format spec: [[fill]align][width][.precision][type] for str, int and float.</summary>
    public static string FormatSpec(object? value, string spec)
    {
        if (spec.Length == 0) return Py.Str(value);
        var m = System.Text.RegularExpressions.Regex.Match(spec, @"^(?:(.)?([<>^]))?(0)?(\d+)?(?:\.(\d+))?([sdfeg%])?$");
        if (!m.Success) throw new JinjaError($"the format spec '{spec}' is not supported");
        string type = m.Groups[6].Value;
        int? precision = m.Groups[5].Success ? int.Parse(m.Groups[5].Value, CultureInfo.InvariantCulture) : null;
        string body = type switch
        {
            "d" => Py.ToLong(value).ToString(CultureInfo.InvariantCulture),
            "f" => Py.ToDouble(value).ToString("F" + (precision ?? 6), CultureInfo.InvariantCulture),
            "%" => (Py.ToDouble(value) * 100).ToString("F" + (precision ?? 6), CultureInfo.InvariantCulture) + "%",
            _ when precision is { } p && value is double d => d.ToString("F" + p, CultureInfo.InvariantCulture),
            _ when precision is { } p && value is string s => s[..Math.Min(p, s.Length)],
            _ => Py.Str(value),
        };
        int width = m.Groups[4].Success ? int.Parse(m.Groups[4].Value, CultureInfo.InvariantCulture) : 0;
        char fill = m.Groups[1].Success ? m.Groups[1].Value[0] : m.Groups[3].Success ? '0' : ' ';
        string align = m.Groups[2].Success ? m.Groups[2].Value : value is string ? "<" : ">";
        if (body.Length >= width) return body;
        int pad = width - body.Length;
        return align switch
        {
            "<" => body + new string(fill, pad),
            "^" => new string(fill, pad / 2) + body + new string(fill, pad - pad / 2),
            _ => new string(fill, pad) + body,
        };
    }

    /// <summary>Python's <c>'…' % args</c>: %s, %r, %d, %i, %f (with precision), %%.</summary>
    public static string Percent(Interpreter it, string fmt, object? args)
    {
        var values = args as PyTuple ?? new List<object?> { args };
        var named = args as Dictionary<string, object?>;
        var sb = new StringBuilder();
        int next = 0;
        for (int i = 0; i < fmt.Length; i++)
        {
            if (fmt[i] != '%') { sb.Append(fmt[i]); continue; }
            if (++i >= fmt.Length) throw new JinjaError("incomplete format");
            string? key = null;
            if (fmt[i] == '(')
            {
                int close = fmt.IndexOf(')', i);
                key = fmt[(i + 1)..close];
                i = close + 1;
            }
            int specStart = i;
            while (i < fmt.Length && (char.IsAsciiDigit(fmt[i]) || fmt[i] is '.' or '-' or '+' or ' ' or '#')) i++;
            string flags = fmt[specStart..i];
            char conv = fmt[i];
            if (conv == '%') { sb.Append('%'); continue; }
            object? v = key is not null ? named?[key] : next < values.Count ? values[next++] : throw new JinjaError("not enough arguments for format string");
            int dot = flags.IndexOf('.');
            int? precision = dot >= 0 ? int.Parse(flags[(dot + 1)..], CultureInfo.InvariantCulture) : null;
            string head = dot >= 0 ? flags[..dot] : flags;
            bool left = head.Contains('-'), zero = head.TrimStart('-', '+', ' ', '#').StartsWith('0'), plus = head.Contains('+');
            string digits = head.TrimStart('-', '+', ' ', '#', '0');
            int width = digits.Length > 0 ? Math.Min(int.Parse(digits, CultureInfo.InvariantCulture), 10_000) : 0;
            string text = conv switch
            {
                's' => precision is { } ps ? Py.Str(v)[..Math.Min(ps, Py.Str(v).Length)] : Py.Str(v),
                'r' => Py.Repr(v),
                'd' or 'i' => Py.ToLong(v).ToString(CultureInfo.InvariantCulture),
                'f' or 'F' => Py.ToDouble(v).ToString("F" + (precision ?? 6), CultureInfo.InvariantCulture),
                _ => throw new JinjaError($"the format '%{conv}' is not supported"),
            };
            bool numeric = conv is 'd' or 'i' or 'f' or 'F';
            if (numeric && plus && !text.StartsWith('-')) text = "+" + text;
            if (text.Length < width)
            {
                if (left) text = text.PadRight(width);
                else if (zero && numeric)
                {
                    bool sign = text[0] is '-' or '+';
                    text = sign ? text[0] + text[1..].PadLeft(width - 1, '0') : text.PadLeft(width, '0');
                }
                else text = text.PadLeft(width);
            }
            sb.Append(text);
        }
        it.Spend(sb.Length);
        return sb.ToString();
    }
}
