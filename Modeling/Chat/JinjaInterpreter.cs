using System.Text;

namespace ShardPipe.Modeling.Chat;

/// <summary>
/// How much one render may do: statements and expressions evaluated, characters produced (output and every string or
/// list built on the way, counted before it is built), macro call depth, and <c>range</c>'s length (jinja2's sandbox
/// allows 100 000). A template that runs past one is a typed error, not a hung or exhausted server.
/// </summary>
public sealed record RenderLimits
{
    public long MaxSteps { get; init; } = 1_000_000;
    public long MaxChars { get; init; } = 4_000_000;
    public int MaxCallDepth { get; init; } = 100;
    public int MaxRange { get; init; } = 100_000;
    public static RenderLimits Default { get; } = new();
}

/// <summary>
/// Runs a parsed template (<see cref="JinjaParser"/>) with jinja2's semantics: scopes (a <c>for</c> body and a macro are
/// scopes of their own; <c>if</c> is not; so only a <see cref="Namespace"/> carries values out of a loop), the
/// <c>loop</c> object, macros with defaults and <c>caller</c>, <see cref="Undefined"/> (printing nothing, failing when
/// used further), attribute-then-item (<c>a.b</c>) and item-then-attribute (<c>a['b']</c>) lookup, Python's operators,
/// and the filters, tests and globals of <see cref="JinjaFilters"/>, <see cref="JinjaTests"/>, <see cref="JinjaGlobals"/>.
/// </summary>
public sealed class Interpreter
{
    private enum Flow { Normal, Break, Continue }

    private sealed class Frame
    {
        private Dictionary<string, object?>? _vars; // made on the first assignment: most loop iterations bind one or two names
        public readonly Frame? Parent;
        public Frame(Frame? parent) => Parent = parent;

        public Dictionary<string, object?> Vars => _vars ??= new Dictionary<string, object?>(StringComparer.Ordinal);

        public bool TryGet(string name, out object? value)
        {
            for (var f = this; f is not null; f = f.Parent)
                if (f._vars is not null && f._vars.TryGetValue(name, out value)) return true;
            value = null;
            return false;
        }
    }

    private readonly RenderLimits _limits;
    private readonly Stack<StringBuilder> _out = new();
    private long _steps, _chars;
    private int _callDepth;

    public int Line { get; private set; }
    public DateTime Now { get; }
    public RenderLimits Limits => _limits;

    public Interpreter(RenderLimits limits, DateTime now)
    {
        _limits = limits;
        Now = now;
    }

    public string Run(List<Stmt> body, IReadOnlyDictionary<string, object?> variables)
    {
        var globals = new Frame(null);
        foreach (var (k, v) in JinjaGlobals.All) globals.Vars[k] = v;
        var top = new Frame(globals);
        foreach (var (k, v) in variables) top.Vars[k] = v;
        _out.Push(new StringBuilder());
        Exec(body, top);
        return _out.Pop().ToString();
    }

    // ---- budget ----

    private void Step(int line)
    {
        Line = line;
        if (++_steps > _limits.MaxSteps) throw new JinjaError($"the template ran more than {_limits.MaxSteps} steps (a runaway loop or recursion?)");
    }

    /// <summary>Counts characters (or list items) about to be made; past the budget the render stops before making them.</summary>
    public void Spend(long chars)
    {
        _chars += chars;
        if (chars > _limits.MaxChars || _chars > _limits.MaxChars * 4)
            throw new JinjaError($"the template builds more than {_limits.MaxChars} characters (a string or list blow-up?)");
    }

    private void Write(string s)
    {
        var sb = _out.Peek();
        if (sb.Length + (long)s.Length > _limits.MaxChars) throw new JinjaError($"the template's output passes {_limits.MaxChars} characters");
        Spend(s.Length);
        sb.Append(s);
    }

    private string Capture(Action body)
    {
        _out.Push(new StringBuilder());
        body();
        return _out.Pop().ToString();
    }

    // ---- statements ----

    private Flow Exec(List<Stmt> body, Frame frame)
    {
        foreach (var s in body)
        {
            var flow = Exec(s, frame);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    private Flow Exec(Stmt stmt, Frame frame)
    {
        Step(stmt.Line);
        switch (stmt)
        {
            case TextStmt t: Write(t.Text); break;
            case OutputStmt o: Write(Py.Str(Eval(o.Value, frame))); break;
            case IfStmt i:
                foreach (var (test, branch) in i.Branches)
                    if (Py.Truthy(Eval(test, frame))) return Exec(branch, frame);
                if (i.Else is not null) return Exec(i.Else, frame);
                break;
            case ForStmt f: return For(f, frame);
            case SetStmt s: Assign(s.Target, Eval(s.Value, frame), frame); break;
            case SetBlockStmt sb:
                {
                    object? value = Capture(() => Exec(sb.Body, frame));
                    foreach (var filter in sb.Filters) value = ApplyFilter(filter, value, frame);
                    Assign(sb.Target, value, frame);
                    break;
                }
            case MacroStmt m: frame.Vars[m.Name] = new Macro(m.Name, m.Params, m.Body, frame, this); break;
            case CallBlockStmt c:
                {
                    var caller = new Macro("caller", c.Params, c.Body, frame, this);
                    var call = c.Call;
                    var (args, kwargs) = EvalArgs(call, frame);
                    kwargs["caller"] = caller;
                    Write(Py.Str(Invoke(Eval(call.Callee, frame), args, kwargs, call.Callee)));
                    break;
                }
            case FilterBlockStmt fb:
                {
                    object? value = Capture(() => Exec(fb.Body, frame));
                    foreach (var filter in fb.Filters) value = ApplyFilter(filter, value, frame);
                    Write(Py.Str(value));
                    break;
                }
            case WithStmt w:
                {
                    var inner = new Frame(frame);
                    foreach (var (target, value) in w.Assignments) Assign(target, Eval(value, frame), inner);
                    return Exec(w.Body, inner);
                }
            case GenerationStmt g: return Exec(g.Body, frame);
            case BreakStmt: return Flow.Break;
            case ContinueStmt: return Flow.Continue;
            default: throw new JinjaError($"unknown statement {stmt.GetType().Name}");
        }
        return Flow.Normal;
    }

    private Flow For(ForStmt f, Frame frame) => Loop(f, Eval(f.Iter, frame), frame, 0);

    private Flow Loop(ForStmt f, object? iterable, Frame frame, int depth)
    {
        if (iterable is Undefined u && u.Hint.Contains("unsafe")) throw u.Error();
        var items = Py.ToList(iterable);
        if (f.Filter is not null)
        {
            var kept = new List<object?>();
            foreach (var item in items)
            {
                Step(f.Line);
                var probe = new Frame(frame);
                Assign(f.Target, item, probe);
                if (Py.Truthy(Eval(f.Filter, probe))) kept.Add(item);
            }
            items = kept;
        }
        if (items.Count == 0)
        {
            if (f.Else is not null) Exec(f.Else, frame);
            return Flow.Normal;
        }
        var loop = new LoopContext(items, depth, f.Recursive ? (value => Capture(() => Loop(f, value, frame, depth + 1))) : null);
        for (int i = 0; i < items.Count; i++)
        {
            Step(f.Line);
            loop.Index0 = i;
            var inner = new Frame(frame);
            Assign(f.Target, items[i], inner);
            inner.Vars["loop"] = loop;
            if (Exec(f.Body, inner) == Flow.Break) break;
        }
        return Flow.Normal;
    }

    private void Assign(Expr target, object? value, Frame frame)
    {
        switch (target)
        {
            case NameExpr n: frame.Vars[n.Name] = value; break;
            case AttrExpr { Target: NameExpr ns } a:
                if (!frame.TryGet(ns.Name, out var obj) || obj is not Namespace space)
                    throw new JinjaError($"cannot assign attribute on non-namespace object '{ns.Name}'");
                space.Attributes[a.Name] = value;
                break;
            case TupleExpr t:
                {
                    var values = value is string ? Py.ToList(value) : value as List<object?> ?? Py.ToList(value);
                    if (values.Count != t.Items.Count)
                        throw new JinjaError($"cannot unpack {values.Count} values into {t.Items.Count} names");
                    for (int i = 0; i < values.Count; i++) Assign(t.Items[i], values[i], frame);
                    break;
                }
            default: throw new JinjaError("cannot assign to this expression");
        }
    }

    // ---- macros ----

    /// <summary>A <c>{% macro %}</c> (or a <c>{% call %}</c> body as <c>caller</c>): called, it renders its body in a scope of its own.</summary>
    private sealed class Macro : IJinjaCallable
    {
        private readonly string _name;
        private readonly List<(string Name, Expr? Default)> _params;
        private readonly List<Stmt> _body;
        private readonly Frame _closure;
        private readonly Interpreter _owner;

        public Macro(string name, List<(string, Expr?)> parameters, List<Stmt> body, Frame closure, Interpreter owner)
        {
            _name = name;
            _params = parameters;
            _body = body;
            _closure = closure;
            _owner = owner;
        }

        public object? Call(Interpreter interpreter, List<object?> args, Dictionary<string, object?> kwargs)
        {
            var it = _owner;
            if (++it._callDepth > it._limits.MaxCallDepth)
            {
                it._callDepth--;
                throw new JinjaError($"macro '{_name}' recursed more than {it._limits.MaxCallDepth} calls deep");
            }
            try
            {
                var frame = new Frame(_closure);
                var rest = new Dictionary<string, object?>(kwargs);
                for (int i = 0; i < _params.Count; i++)
                {
                    var (p, def) = _params[i];
                    if (i < args.Count) { if (rest.Remove(p)) throw new JinjaError($"macro '{_name}' got multiple values for argument '{p}'"); frame.Vars[p] = args[i]; }
                    else if (rest.Remove(p, out var v)) frame.Vars[p] = v;
                    else frame.Vars[p] = def is null ? new Undefined($"parameter '{p}' of macro '{_name}' was not provided") : it.Eval(def, frame);
                }
                if (rest.Remove("caller", out var caller)) frame.Vars["caller"] = caller;
                frame.Vars["varargs"] = args.Skip(_params.Count).ToList();
                frame.Vars["kwargs"] = rest;
                return it.Capture(() => it.Exec(_body, frame));
            }
            finally { it._callDepth--; }
        }
    }

    // ---- expressions ----

    private object? Eval(Expr e, Frame frame)
    {
        Step(e.Line);
        switch (e)
        {
            case ConstExpr c: return c.Value;
            case NameExpr n: return frame.TryGet(n.Name, out var v) ? v : new Undefined($"'{n.Name}' is undefined");
            case TupleExpr t: return new PyTuple(t.Items.Select(x => Eval(x, frame)));
            case ListExpr l: return l.Items.Select(x => Eval(x, frame)).ToList();
            case DictExpr d:
                {
                    var dict = new Dictionary<string, object?>(StringComparer.Ordinal);
                    foreach (var (k, x) in d.Items)
                        dict[Eval(k, frame) as string ?? throw new JinjaError("dict literal keys must be strings here")] = Eval(x, frame);
                    return dict;
                }
            case AttrExpr a: return Members.GetAttr(Eval(a.Target, frame), a.Name);
            case ItemExpr i:
                {
                    var target = Eval(i.Target, frame);
                    if (i.Index is SliceExpr s)
                        return Members.Slice(target, s.Start is null ? null : Eval(s.Start, frame), s.Stop is null ? null : Eval(s.Stop, frame), s.Step is null ? null : Eval(s.Step, frame));
                    return Members.GetItem(target, Eval(i.Index, frame));
                }
            case CallExpr call:
                {
                    var callee = Eval(call.Callee, frame);
                    var (args, kwargs) = EvalArgs(call, frame);
                    return Invoke(callee, args, kwargs, call.Callee);
                }
            case FilterExpr f: return ApplyFilter(f, Eval(f.Target!, frame), frame);
            case TestExpr t:
                {
                    // 'is defined' must see an undefined name without failing on it.
                    var value = Eval(t.Target, frame);
                    var args = t.Args.Select(x => Eval(x, frame)).ToList();
                    var kwargs = t.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value, frame));
                    bool result = JinjaTests.Apply(this, t.Name, value, args, kwargs);
                    return t.Negated ? !result : result;
                }
            case UnaryExpr u:
                {
                    var x = Eval(u.Operand, frame);
                    return u.Op switch
                    {
                        "not" => !Py.Truthy(x),
                        "-" => x switch { long l => l == long.MinValue ? throw new JinjaError("integer overflow") : (object)(-l), double d => (object)(-d), bool b => (object)(b ? -1L : 0L), Undefined un => throw un.Error(), _ => throw new JinjaError($"bad operand type for unary -: '{Py.TypeName(x)}'") },
                        _ => x switch { long or double => x, bool b => b ? 1L : 0L, Undefined un => throw un.Error(), _ => throw new JinjaError($"bad operand type for unary +: '{Py.TypeName(x)}'") },
                    };
                }
            case BinaryExpr b:
                {
                    if (b.Op == "and") { var l = Eval(b.Left, frame); return Py.Truthy(l) ? Eval(b.Right, frame) : l; }
                    if (b.Op == "or") { var l = Eval(b.Left, frame); return Py.Truthy(l) ? l : Eval(b.Right, frame); }
                    return Operators.Binary(this, b.Op, Eval(b.Left, frame), Eval(b.Right, frame));
                }
            case CompareExpr c:
                {
                    var left = Eval(c.First, frame);
                    foreach (var (op, rightExpr) in c.Rest)
                    {
                        var right = Eval(rightExpr, frame);
                        bool ok = op switch
                        {
                            "==" => Py.Eq(left, right),
                            "!=" => !Py.Eq(left, right),
                            "in" => Py.Contains(right, left),
                            "notin" => !Py.Contains(right, left),
                            _ => Ordered(op, left, right),
                        };
                        if (!ok) return false;
                        left = right;
                    }
                    return true;
                }
            case CondExpr c:
                return Py.Truthy(Eval(c.Test, frame)) ? Eval(c.Then, frame)
                    : c.Else is null ? new Undefined("the conditional expression had no else branch") : Eval(c.Else, frame);
            case SliceExpr: throw new JinjaError("a slice outside a subscript");
            default: throw new JinjaError($"unknown expression {e.GetType().Name}");
        }
    }

    private static bool Ordered(string op, object? left, object? right)
    {
        if (left is Undefined u) throw u.Error();
        if (right is Undefined v) throw v.Error();
        int c = Py.Compare(left, right);
        return op switch { "<" => c < 0, "<=" => c <= 0, ">" => c > 0, _ => c >= 0 };
    }

    private (List<object?>, Dictionary<string, object?>) EvalArgs(CallExpr call, Frame frame)
    {
        var args = call.Args.Select(a => Eval(a, frame)).ToList();
        if (call.DynArgs is not null) args.AddRange(Py.Iterate(Eval(call.DynArgs, frame)));
        var kwargs = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (k, x) in call.Kwargs) kwargs[k] = Eval(x, frame);
        if (call.DynKwargs is not null)
        {
            if (Eval(call.DynKwargs, frame) is not Dictionary<string, object?> d) throw new JinjaError("** needs a mapping");
            foreach (var (k, x) in d) kwargs[k] = x;
        }
        return (args, kwargs);
    }

    public object? Invoke(object? callee, List<object?> args, Dictionary<string, object?> kwargs, Expr? what = null)
    {
        return callee switch
        {
            IJinjaCallable c => c.Call(this, args, kwargs),
            LoopContext { Recurse: { } recurse } when args.Count == 1 => recurse(args[0]),
            Undefined u => throw u.Error(),
            _ => throw new JinjaError($"'{Py.TypeName(callee)}' object is not callable"),
        };
    }

    private object? ApplyFilter(FilterExpr f, object? value, Frame frame)
    {
        var args = f.Args.Select(a => Eval(a, frame)).ToList();
        var kwargs = f.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value, frame));
        return JinjaFilters.Apply(this, f.Name, value, args, kwargs);
    }
}

/// <summary>jinja2's <c>loop</c> inside a for: index, index0, revindex(0), first, last, length, previtem, nextitem, depth, cycle(), changed().</summary>
public sealed class LoopContext
{
    private readonly List<object?> _items;
    private List<object?>? _lastChanged;
    public int Index0 { get; set; }
    public int Depth0 { get; }
    public Func<object?, object?>? Recurse { get; }

    public LoopContext(List<object?> items, int depth0, Func<object?, object?>? recurse)
    {
        _items = items;
        Depth0 = depth0;
        Recurse = recurse;
    }

    public object? Get(string name) => name switch
    {
        "index" => (long)Index0 + 1,
        "index0" => (long)Index0,
        "revindex" => (long)(_items.Count - Index0),
        "revindex0" => (long)(_items.Count - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == _items.Count - 1,
        "length" => (long)_items.Count,
        "depth" => (long)Depth0 + 1,
        "depth0" => (long)Depth0,
        "previtem" => Index0 > 0 ? _items[Index0 - 1] : new Undefined("there is no previous item"),
        "nextitem" => Index0 + 1 < _items.Count ? _items[Index0 + 1] : new Undefined("there is no next item"),
        "cycle" => new JinjaFunction("loop.cycle", (_, args, _) => args.Count == 0 ? throw new JinjaError("no items for cycling given") : args[Index0 % args.Count]),
        "changed" => new JinjaFunction("loop.changed", (_, args, _) =>
        {
            if (_lastChanged is not null && Py.Eq(_lastChanged, args)) return false;
            _lastChanged = args;
            return true;
        }),
        _ => new Undefined($"'LoopContext' object has no attribute '{name}'"),
    };
}
