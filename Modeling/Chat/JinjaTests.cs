namespace ShardPipe.Modeling.Chat;

/// <summary>jinja2 3.1's built-in tests (<c>x is defined</c>, <c>x is mapping</c>, <c>x is equalto y</c>, …); an unknown test is an error naming it.</summary>
public static class JinjaTests
{
    public static bool Apply(Interpreter it, string name, object? value, List<object?> args, Dictionary<string, object?> kwargs)
    {
        object? Arg(string param) => new Args(name, args, kwargs, param).Required(param);
        return name switch
        {
            "defined" => value is not Undefined,
            "undefined" => value is Undefined,
            "none" => value is null,
            "boolean" => value is bool,
            "true" => value is true,
            "false" => value is false,
            "integer" => value is long,
            "float" => value is double,
            "number" => value is long or double or bool,
            "string" => value is string,
            "mapping" => value is Dictionary<string, object?> or Namespace,
            "sequence" => value is string or List<object?> or Dictionary<string, object?>,
            "iterable" => value is string or List<object?> or Dictionary<string, object?> or Undefined,
            "callable" => value is IJinjaCallable,
            "lower" => value is string s && s.Any(char.IsLetter) && !s.Any(char.IsUpper),
            "upper" => value is string u && u.Any(char.IsLetter) && !u.Any(char.IsLower),
            "odd" => Py.ToLong(value) % 2 != 0,
            "even" => Py.ToLong(value) % 2 == 0,
            "divisibleby" => Py.ToLong(value) % Py.ToLong(Arg("num")) == 0,
            "eq" or "equalto" or "==" => Py.Eq(value, Arg("other")),
            "ne" or "!=" => !Py.Eq(value, Arg("other")),
            "lt" or "lessthan" or "<" => Py.Compare(value, Arg("other")) < 0,
            "le" or "<=" => Py.Compare(value, Arg("other")) <= 0,
            "gt" or "greaterthan" or ">" => Py.Compare(value, Arg("other")) > 0,
            "ge" or ">=" => Py.Compare(value, Arg("other")) >= 0,
            "in" => Py.Contains(Arg("seq"), value),
            "sameas" => Same(value, Arg("other")),
            "escaped" => false,
            "filter" => value is string f && JinjaFilters.Exists(f),
            "test" => value is string t && Known.Contains(t),
            _ => throw new JinjaError($"No test named '{name}'."),
        };
    }

    private static readonly HashSet<string> Known = new()
    {
        "defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number", "string", "mapping", "sequence", "iterable",
        "callable", "lower", "upper", "odd", "even", "divisibleby", "eq", "equalto", "==", "ne", "!=", "lt", "lessthan", "<", "le", "<=", "gt",
        "greaterthan", ">", "ge", ">=", "in", "sameas", "escaped", "filter", "test",
    };

    /// <summary>Python's <c>is</c>: None, True and False are singletons; other values by reference (small ints and strings as CPython interns them is not modelled).</summary>
    private static bool Same(object? a, object? b) => (a, b) switch
    {
        (null, null) => true,
        (bool x, bool y) => x == y,
        (long x, long y) => x == y,
        _ => ReferenceEquals(a, b),
    };
}
