namespace ShardPipe.Modeling.Chat;

/// <summary>
/// jinja2's grammar over <see cref="JinjaLexer"/>'s tokens: the statements (<c>if/elif/else</c>, <c>for … in … if …</c>
/// with <c>else</c> and <c>recursive</c>, <c>set</c> and block <c>set</c>, <c>macro</c>, <c>call</c>, <c>filter</c>,
/// <c>with</c>, <c>break</c>/<c>continue</c>, transformers' <c>generation</c>) and the expressions with jinja2's
/// precedence: conditional, <c>or</c>, <c>and</c>, <c>not</c>, comparisons and <c>in</c>, <c>+ -</c>, <c>~</c>,
/// <c>* / // %</c>, <c>**</c>, unary signs, then postfix (attributes, subscripts and slices, calls) with filters
/// (<c>|</c>) and tests (<c>is</c>).
/// </summary>
public sealed class JinjaParser
{
    private const int MaxNesting = 200;
    private readonly List<JinjaToken> _tokens;
    private int _pos;
    private int _depth;

    private JinjaParser(List<JinjaToken> tokens) => _tokens = tokens;

    public static List<Stmt> Parse(string source)
    {
        var parser = new JinjaParser(JinjaLexer.Tokenize(source));
        var body = parser.Body(Array.Empty<string>());
        if (parser.Current.Kind != TokenKind.Eof)
            throw new JinjaSyntaxError($"unexpected '{{% {parser.Peek(1).Text} %}}'", parser.Current.Line);
        return body;
    }

    private JinjaToken Current => _tokens[_pos];
    private JinjaToken Peek(int k) => _tokens[Math.Min(_pos + k, _tokens.Count - 1)];
    private JinjaToken Next() => _tokens[_pos < _tokens.Count - 1 ? _pos++ : _pos];

    private bool IsName(string name) => Current.Kind == TokenKind.Name && Current.Text == name;
    private bool IsOp(string op) => Current.Kind == TokenKind.Op && Current.Text == op;

    private bool SkipName(string name)
    {
        if (!IsName(name)) return false;
        _pos++;
        return true;
    }

    private bool SkipOp(string op)
    {
        if (!IsOp(op)) return false;
        _pos++;
        return true;
    }

    private JinjaToken Expect(TokenKind kind, string? text = null)
    {
        var t = Current;
        if (t.Kind != kind || text is not null && t.Text != text)
            throw new JinjaSyntaxError($"expected {(text is null ? kind.ToString().ToLowerInvariant() : $"'{text}'")}, got {t}", t.Line);
        return Next();
    }

    private string ExpectName() => Expect(TokenKind.Name).Text;

    // ---- statements ----

    /// <summary>Statements until a block tag whose first name is one of <paramref name="ends"/> (left unread: at '{%').</summary>
    private List<Stmt> Body(string[] ends)
    {
        var body = new List<Stmt>();
        while (true)
        {
            var t = Current;
            switch (t.Kind)
            {
                case TokenKind.Eof:
                    if (ends.Length > 0) throw new JinjaSyntaxError($"unexpected end of template; expected {string.Join(" or ", ends.Select(e => $"'{{% {e} %}}'"))}", t.Line);
                    return body;
                case TokenKind.Data:
                    body.Add(new TextStmt(t.Text, t.Line));
                    _pos++;
                    break;
                case TokenKind.VarBegin:
                    _pos++;
                    body.Add(new OutputStmt(Tuple(), t.Line));
                    Expect(TokenKind.VarEnd);
                    break;
                case TokenKind.BlockBegin:
                    var name = Peek(1);
                    if (name.Kind == TokenKind.Name && ends.Contains(name.Text)) return body;
                    _pos++;
                    body.Add(Statement());
                    break;
                default:
                    throw new JinjaSyntaxError($"unexpected {t}", t.Line);
            }
        }
    }

    /// <summary>Reads '{% name' … (the tag's start must be current) and returns the name.</summary>
    private string EndTag(params string[] names)
    {
        Expect(TokenKind.BlockBegin);
        var t = Current;
        if (t.Kind != TokenKind.Name || !names.Contains(t.Text)) throw new JinjaSyntaxError($"expected {string.Join(" or ", names)}, got {t}", t.Line);
        _pos++;
        return t.Text;
    }

    private Stmt Statement()
    {
        var t = Current;
        if (t.Kind != TokenKind.Name) throw new JinjaSyntaxError($"a block tag must start with a statement name, got {t}", t.Line);
        _pos++;
        switch (t.Text)
        {
            case "if": return If(t.Line);
            case "for": return For(t.Line);
            case "set": return Set(t.Line);
            case "macro": return Macro(t.Line);
            case "call": return CallBlock(t.Line);
            case "filter":
                {
                    var filters = FilterChain();
                    Expect(TokenKind.BlockEnd);
                    var body = Body(new[] { "endfilter" });
                    EndTag("endfilter");
                    Expect(TokenKind.BlockEnd);
                    return new FilterBlockStmt(filters, body, t.Line);
                }
            case "with":
                {
                    var assigns = new List<(Expr, Expr)>();
                    while (Current.Kind != TokenKind.BlockEnd)
                    {
                        if (assigns.Count > 0) Expect(TokenKind.Op, ",");
                        var target = AssignTarget(namespaceAllowed: false);
                        Expect(TokenKind.Op, "=");
                        assigns.Add((target, Expression()));
                    }
                    Expect(TokenKind.BlockEnd);
                    var body = Body(new[] { "endwith" });
                    EndTag("endwith");
                    Expect(TokenKind.BlockEnd);
                    return new WithStmt(assigns, body, t.Line);
                }
            case "generation":
                {
                    Expect(TokenKind.BlockEnd);
                    var body = Body(new[] { "endgeneration" });
                    EndTag("endgeneration");
                    Expect(TokenKind.BlockEnd);
                    return new GenerationStmt(body, t.Line);
                }
            case "break":
                Expect(TokenKind.BlockEnd);
                return new BreakStmt(t.Line);
            case "continue":
                Expect(TokenKind.BlockEnd);
                return new ContinueStmt(t.Line);
            case "include" or "import" or "from" or "extends" or "block":
                throw new JinjaSyntaxError($"'{{% {t.Text} %}}' needs other templates; a chat template is one string", t.Line);
            default:
                throw new JinjaSyntaxError($"unknown tag '{t.Text}'", t.Line);
        }
    }

    private Stmt If(int line)
    {
        var branches = new List<(Expr, List<Stmt>)>();
        List<Stmt>? otherwise = null;
        var test = Tuple(condExpr: false);
        while (true)
        {
            Expect(TokenKind.BlockEnd);
            var body = Body(new[] { "elif", "else", "endif" });
            branches.Add((test, body));
            string end = EndTag("elif", "else", "endif");
            if (end == "elif") { test = Tuple(condExpr: false); continue; }
            if (end == "else")
            {
                Expect(TokenKind.BlockEnd);
                otherwise = Body(new[] { "endif" });
                EndTag("endif");
            }
            Expect(TokenKind.BlockEnd);
            return new IfStmt(branches, otherwise, line);
        }
    }

    private Stmt For(int line)
    {
        var target = AssignTarget(namespaceAllowed: false, extraEnd: "in");
        if (!SkipName("in")) throw new JinjaSyntaxError($"expected 'in' in a for loop, got {Current}", Current.Line);
        var iter = Tuple(condExpr: false, extraEnd: "recursive");
        Expr? filter = null;
        if (SkipName("if")) filter = Expression();
        bool recursive = SkipName("recursive");
        Expect(TokenKind.BlockEnd);
        var body = Body(new[] { "endfor", "else" });
        List<Stmt>? otherwise = null;
        if (EndTag("endfor", "else") == "else")
        {
            Expect(TokenKind.BlockEnd);
            otherwise = Body(new[] { "endfor" });
            EndTag("endfor");
        }
        Expect(TokenKind.BlockEnd);
        return new ForStmt(target, iter, filter, body, otherwise, recursive, line);
    }

    private Stmt Set(int line)
    {
        var target = AssignTarget(namespaceAllowed: true);
        if (SkipOp("="))
        {
            var value = Tuple();
            Expect(TokenKind.BlockEnd);
            return new SetStmt(target, value, line);
        }
        var filters = SkipOp("|") ? FilterChain() : new List<FilterExpr>();
        Expect(TokenKind.BlockEnd);
        var body = Body(new[] { "endset" });
        EndTag("endset");
        Expect(TokenKind.BlockEnd);
        return new SetBlockStmt(target, filters, body, line);
    }

    private Stmt Macro(int line)
    {
        string name = ExpectName();
        var parameters = Signature();
        Expect(TokenKind.BlockEnd);
        var body = Body(new[] { "endmacro" });
        EndTag("endmacro");
        if (Current.Kind == TokenKind.Name) _pos++; // {% endmacro name %}
        Expect(TokenKind.BlockEnd);
        return new MacroStmt(name, parameters, body, line);
    }

    private Stmt CallBlock(int line)
    {
        var parameters = IsOp("(") ? Signature() : new List<(string, Expr?)>();
        var call = Expression() as CallExpr ?? throw new JinjaSyntaxError("'{% call %}' needs a call", line);
        Expect(TokenKind.BlockEnd);
        var body = Body(new[] { "endcall" });
        EndTag("endcall");
        Expect(TokenKind.BlockEnd);
        return new CallBlockStmt(call, parameters, body, line);
    }

    private List<(string, Expr?)> Signature()
    {
        var parameters = new List<(string, Expr?)>();
        Expect(TokenKind.Op, "(");
        while (!SkipOp(")"))
        {
            if (parameters.Count > 0) Expect(TokenKind.Op, ",");
            if (SkipOp(")")) break;
            string p = ExpectName();
            Expr? value = SkipOp("=") ? Expression() : null;
            if (value is null && parameters.Any(x => x.Item2 is not null)) throw new JinjaSyntaxError($"parameter '{p}' without a default follows one with a default", Current.Line);
            parameters.Add((p, value));
        }
        return parameters;
    }

    /// <summary>Filters after '|' or in '{% filter %}': name(args) | name …</summary>
    private List<FilterExpr> FilterChain()
    {
        var filters = new List<FilterExpr> { Filter(null) };
        while (SkipOp("|")) filters.Add(Filter(null));
        return filters;
    }

    private Expr AssignTarget(bool namespaceAllowed, string? extraEnd = null)
    {
        var items = new List<Expr>();
        int line = Current.Line;
        do
        {
            var name = Expect(TokenKind.Name);
            if (namespaceAllowed && IsOp(".") && Peek(1).Kind == TokenKind.Name)
            {
                _pos++;
                items.Add(new AttrExpr(new NameExpr(name.Text, name.Line), ExpectName(), name.Line));
            }
            else items.Add(new NameExpr(name.Text, name.Line));
        } while (SkipOp(",") && Current.Kind == TokenKind.Name && !(extraEnd is not null && IsName(extraEnd)));
        return items.Count == 1 ? items[0] : new TupleExpr(items, line);
    }

    // ---- expressions ----

    private bool TupleEnds(string? extraEnd) =>
        Current.Kind is TokenKind.VarEnd or TokenKind.BlockEnd or TokenKind.Eof || IsOp(")") || extraEnd is not null && IsName(extraEnd);

    private Expr Tuple(bool condExpr = true, string? extraEnd = null, bool explicitParens = false)
    {
        int line = Current.Line;
        var items = new List<Expr>();
        bool comma = false;
        while (true)
        {
            if (items.Count > 0)
            {
                if (!SkipOp(",")) break;
                comma = true;
            }
            if (TupleEnds(extraEnd)) break;
            items.Add(condExpr ? Expression() : Or());
        }
        if (items.Count == 0)
        {
            if (!explicitParens) throw new JinjaSyntaxError($"expected an expression, got {Current}", Current.Line);
            return new TupleExpr(items, line);
        }
        return items.Count == 1 && !comma ? items[0] : new TupleExpr(items, line);
    }

    private Expr Expression()
    {
        if (++_depth > MaxNesting) throw new JinjaSyntaxError($"expressions nest more than {MaxNesting} levels deep", Current.Line);
        try
        {
            var e = Or();
            while (IsName("if"))
            {
                int line = Next().Line;
                var test = Or();
                Expr? otherwise = SkipName("else") ? Expression() : null;
                e = new CondExpr(test, e, otherwise, line);
            }
            return e;
        }
        finally { _depth--; }
    }

    private Expr Or()
    {
        var e = And();
        while (IsName("or")) { int line = Next().Line; e = new BinaryExpr("or", e, And(), line); }
        return e;
    }

    private Expr And()
    {
        var e = Not();
        while (IsName("and")) { int line = Next().Line; e = new BinaryExpr("and", e, Not(), line); }
        return e;
    }

    private Expr Not()
    {
        if (IsName("not")) { int line = Next().Line; return new UnaryExpr("not", Not(), line); }
        return Compare();
    }

    private Expr Compare()
    {
        int line = Current.Line;
        var first = Math1();
        var rest = new List<(string, Expr)>();
        while (true)
        {
            if (Current.Kind == TokenKind.Op && Current.Text is "==" or "!=" or ">" or ">=" or "<" or "<=") { string op = Next().Text; rest.Add((op, Math1())); }
            else if (SkipName("in")) rest.Add(("in", Math1()));
            else if (IsName("not") && Peek(1).Kind == TokenKind.Name && Peek(1).Text == "in") { _pos += 2; rest.Add(("notin", Math1())); }
            else break;
        }
        return rest.Count == 0 ? first : new CompareExpr(first, rest, line);
    }

    private Expr Math1()
    {
        var e = Concat();
        while (Current.Kind == TokenKind.Op && Current.Text is "+" or "-") { var op = Next(); e = new BinaryExpr(op.Text, e, Concat(), op.Line); }
        return e;
    }

    private Expr Concat()
    {
        var e = Math2();
        while (IsOp("~")) { int line = Next().Line; e = new BinaryExpr("~", e, Math2(), line); }
        return e;
    }

    private Expr Math2()
    {
        var e = Pow();
        while (Current.Kind == TokenKind.Op && Current.Text is "*" or "/" or "//" or "%") { var op = Next(); e = new BinaryExpr(op.Text, e, Pow(), op.Line); }
        return e;
    }

    private Expr Pow()
    {
        var e = Unary(true);
        while (IsOp("**")) { int line = Next().Line; e = new BinaryExpr("**", e, Unary(true), line); }
        return e;
    }

    private Expr Unary(bool withFilter)
    {
        if (++_depth > MaxNesting) throw new JinjaSyntaxError($"expressions nest more than {MaxNesting} levels deep", Current.Line);
        try
        {
            Expr e;
            if (IsOp("-") || IsOp("+")) { var op = Next(); e = new UnaryExpr(op.Text, Unary(false), op.Line); }
            else e = Primary();
            e = Postfix(e);
            return withFilter ? FilterTail(e) : e;
        }
        finally { _depth--; }
    }

    private Expr Primary()
    {
        var t = Current;
        switch (t.Kind)
        {
            case TokenKind.Name:
                _pos++;
                return t.Text switch
                {
                    "true" or "True" => new ConstExpr(true, t.Line),
                    "false" or "False" => new ConstExpr(false, t.Line),
                    "none" or "None" => new ConstExpr(null, t.Line),
                    _ => new NameExpr(t.Text, t.Line),
                };
            case TokenKind.String:
                {
                    _pos++;
                    string s = (string)t.Value!;
                    while (Current.Kind == TokenKind.String) s += (string)Next().Value!;
                    return new ConstExpr(s, t.Line);
                }
            case TokenKind.Int:
            case TokenKind.Float:
                _pos++;
                return new ConstExpr(t.Value, t.Line);
            case TokenKind.Op when t.Text == "(":
                {
                    _pos++;
                    var e = Tuple(explicitParens: true);
                    Expect(TokenKind.Op, ")");
                    return e;
                }
            case TokenKind.Op when t.Text == "[":
                {
                    _pos++;
                    var items = new List<Expr>();
                    while (!SkipOp("]"))
                    {
                        if (items.Count > 0) Expect(TokenKind.Op, ",");
                        if (SkipOp("]")) break;
                        items.Add(Expression());
                    }
                    return new ListExpr(items, t.Line);
                }
            case TokenKind.Op when t.Text == "{":
                {
                    _pos++;
                    var items = new List<(Expr, Expr)>();
                    while (!SkipOp("}"))
                    {
                        if (items.Count > 0) Expect(TokenKind.Op, ",");
                        if (SkipOp("}")) break;
                        var key = Expression();
                        Expect(TokenKind.Op, ":");
                        items.Add((key, Expression()));
                    }
                    return new DictExpr(items, t.Line);
                }
            default:
                throw new JinjaSyntaxError($"unexpected {t}", t.Line);
        }
    }

    private Expr Postfix(Expr e)
    {
        while (true)
        {
            var t = Current;
            if (IsOp("."))
            {
                _pos++;
                var name = Next();
                e = name.Kind switch
                {
                    TokenKind.Name => new AttrExpr(e, name.Text, t.Line),
                    TokenKind.Int => new ItemExpr(e, new ConstExpr(name.Value, t.Line), t.Line),
                    _ => throw new JinjaSyntaxError($"expected an attribute name after '.', got {name}", name.Line),
                };
            }
            else if (IsOp("["))
            {
                _pos++;
                var items = new List<Expr>();
                while (!SkipOp("]"))
                {
                    if (items.Count > 0) Expect(TokenKind.Op, ",");
                    items.Add(Subscript());
                }
                if (items.Count == 0) throw new JinjaSyntaxError("an empty subscript '[]'", t.Line);
                e = new ItemExpr(e, items.Count == 1 ? items[0] : new TupleExpr(items, t.Line), t.Line);
            }
            else if (IsOp("(")) e = Call(e);
            else return e;
        }
    }

    private Expr Subscript()
    {
        int line = Current.Line;
        Expr? start = null, stop = null, step = null;
        if (!IsOp(":")) { start = Expression(); if (!IsOp(":")) return start; }
        Expect(TokenKind.Op, ":");
        if (!IsOp("]") && !IsOp(",") && !IsOp(":")) stop = Expression();
        if (SkipOp(":") && !IsOp("]") && !IsOp(",")) step = Expression();
        return new SliceExpr(start, stop, step, line);
    }

    private CallExpr Call(Expr callee)
    {
        int line = Expect(TokenKind.Op, "(").Line;
        var (args, kwargs, dynArgs, dynKwargs) = CallArgs();
        return new CallExpr(callee, args, kwargs, dynArgs, dynKwargs, line);
    }

    /// <summary>After '(' : positional, keyword (name=value), *args and **kwargs, up to ')'.</summary>
    private (List<Expr>, List<(string, Expr)>, Expr?, Expr?) CallArgs()
    {
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        Expr? dynArgs = null, dynKwargs = null;
        bool first = true;
        while (!SkipOp(")"))
        {
            if (!first) { Expect(TokenKind.Op, ","); if (SkipOp(")")) break; }
            first = false;
            if (SkipOp("**")) dynKwargs = Expression();
            else if (SkipOp("*")) dynArgs = Expression();
            else if (Current.Kind == TokenKind.Name && Peek(1).Is(TokenKind.Op, "="))
            {
                string name = Next().Text;
                _pos++;
                kwargs.Add((name, Expression()));
            }
            else
            {
                if (kwargs.Count > 0) throw new JinjaSyntaxError("a positional argument follows a keyword argument", Current.Line);
                args.Add(Expression());
            }
        }
        return (args, kwargs, dynArgs, dynKwargs);
    }

    private FilterExpr Filter(Expr? target)
    {
        var t = Expect(TokenKind.Name);
        string name = t.Text;
        while (IsOp(".") && Peek(1).Kind == TokenKind.Name) { _pos++; name += "." + Next().Text; }
        if (IsOp("("))
        {
            _pos++;
            var (args, kwargs, dynArgs, dynKwargs) = CallArgs();
            if (dynArgs is not null || dynKwargs is not null) throw new JinjaSyntaxError("*args and **kwargs in a filter call are not supported", t.Line);
            return new FilterExpr(target, name, args, kwargs, t.Line);
        }
        return new FilterExpr(target, name, new List<Expr>(), new List<(string, Expr)>(), t.Line);
    }

    private Expr FilterTail(Expr e)
    {
        while (true)
        {
            if (SkipOp("|")) e = Filter(e);
            else if (IsName("is"))
            {
                int line = Next().Line;
                bool negated = SkipName("not");
                var name = Expect(TokenKind.Name);
                string test = name.Text;
                while (IsOp(".") && Peek(1).Kind == TokenKind.Name) { _pos++; test += "." + Next().Text; }
                var args = new List<Expr>();
                var kwargs = new List<(string, Expr)>();
                if (IsOp("("))
                {
                    _pos++;
                    var (a, k, _, _) = CallArgs();
                    args = a;
                    kwargs = k;
                }
                else if ((Current.Kind is TokenKind.Name or TokenKind.String or TokenKind.Int or TokenKind.Float || IsOp("[") || IsOp("{"))
                         && !(IsName("else") || IsName("or") || IsName("and")))
                {
                    if (IsName("is")) throw new JinjaSyntaxError("tests cannot be chained with 'is'", Current.Line);
                    args.Add(Postfix(Primary()));
                }
                e = new TestExpr(e, test, args, kwargs, negated, line);
            }
            else if (IsOp("(")) e = Call(e);
            else return e;
        }
    }
}
