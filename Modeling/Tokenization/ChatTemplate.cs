using System.Globalization;
using System.Text;

namespace ShardPipe.Modeling.Tokenization;

/// <summary>A chat message as templates see it: <c>message['role']</c>, <c>message['content']</c>.</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>
/// Hugging Face chat templates (<c>chat_template</c> in tokenizer_config.json, Jinja) rendered as transformers 4.38's
/// <c>apply_chat_template</c> does — Jinja with <c>trim_blocks</c> and <c>lstrip_blocks</c>, <c>messages</c>,
/// <c>add_generation_prompt</c>, the special tokens (<c>bos_token</c>, <c>eos_token</c>, …) and
/// <c>raise_exception</c>. No Jinja engine exists for .NET, so this is the subset the common templates use (Llama 2
/// and 3, Mistral, ChatML/Qwen2, Zephyr): text, <c>{{ … }}</c>, <c>{% if/elif/else %}</c>, <c>{% for … in … %}</c>
/// with <c>loop.*</c>, <c>{% set %}</c>, comments, whitespace control (<c>-</c>), string/number/boolean/list literals,
/// subscripts and slices, attributes, <c>+ - * / // % ~</c>, comparisons, <c>in</c>, <c>and/or/not</c>, conditional
/// expressions, the filters <c>trim</c>, <c>length</c>, <c>upper</c>, <c>lower</c>, <c>string</c>, <c>default</c>, tests
/// <c>defined/undefined/none/string/number</c>, and the string methods <c>strip/lstrip/rstrip/upper/lower/title/startswith/endswith</c>.
/// Anything else is a <see cref="UnsupportedException"/> naming the construct — never a silently different prompt.
/// </summary>
public sealed class ChatTemplate
{
    private readonly List<Node> _body;

    private ChatTemplate(List<Node> body) => _body = body;

    public static ChatTemplate Parse(string source) => new(new Parser(Lexer.Tokens(source)).Template());

    /// <summary>Renders the conversation; <paramref name="specialTokens"/> are bos_token, eos_token, … by name.</summary>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, IReadOnlyDictionary<string, string> specialTokens)
    {
        var scope = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = messages.Select(m => (object?)new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList(),
            ["add_generation_prompt"] = addGenerationPrompt,
        };
        foreach (var (k, v) in specialTokens) scope[k] = v;
        var output = new StringBuilder();
        new Interpreter(scope, output).Run(_body);
        return output.ToString();
    }

    // ---- tokens -------------------------------------------------------------------------------------------------

    private enum Kind { Text, Output, Statement, Comment }

    private sealed record Token(Kind Kind, string Body, bool TrimBefore, bool TrimAfter, int Line);

    private static class Lexer
    {
        public static List<Token> Tokens(string s)
        {
            var tokens = new List<Token>();
            int i = 0, line = 1;
            var text = new StringBuilder();
            while (i < s.Length)
            {
                if (s[i] == '{' && i + 1 < s.Length && s[i + 1] is '{' or '%' or '#')
                {
                    char open = s[i + 1];
                    string close = open switch { '{' => "}}", '%' => "%}", _ => "#}" };
                    int end = s.IndexOf(close, i + 2, StringComparison.Ordinal);
                    if (end < 0) throw new UnsupportedException($"chat template line {line}: '{{{open}' is never closed");
                    string inner = s[(i + 2)..end];
                    bool trimBefore = inner.StartsWith('-'), trimAfter = inner.EndsWith('-');
                    if (inner.StartsWith('+') || inner.EndsWith('+')) throw new UnsupportedException($"chat template line {line}: '+' whitespace control is not supported");
                    if (trimBefore) inner = inner[1..];
                    if (trimAfter && inner.Length > 0) inner = inner[..^1];
                    tokens.Add(new Token(Kind.Text, text.ToString(), false, false, line));
                    text.Clear();
                    tokens.Add(new Token(open switch { '{' => Kind.Output, '%' => Kind.Statement, _ => Kind.Comment }, inner.Trim(), trimBefore, trimAfter, line));
                    line += s.AsSpan(i, end + 2 - i).Count('\n');
                    i = end + 2;
                }
                else
                {
                    if (s[i] == '\n') line++;
                    text.Append(s[i++]);
                }
            }
            tokens.Add(new Token(Kind.Text, text.ToString(), false, false, line));
            ApplyWhitespace(tokens);
            return tokens.Where(t => t.Kind is Kind.Output or Kind.Statement || t.Kind == Kind.Text && t.Body.Length > 0).ToList();
        }

        /// <summary>
        /// Jinja's whitespace rules as transformers configures them. First lstrip_blocks, on the source as written: the
        /// spaces and tabs between a line's start and a block or comment tag go. Then the '-' markers (all whitespace
        /// on that side) and trim_blocks (the first newline after a block or comment tag).
        /// </summary>
        private static void ApplyWhitespace(List<Token> tokens)
        {
            static bool Block(Token t) => t.Kind is Kind.Statement or Kind.Comment;
            for (int k = 1; k < tokens.Count; k++)
            {
                if (!Block(tokens[k]) || tokens[k].TrimBefore || tokens[k - 1].Kind != Kind.Text) continue;
                string b = tokens[k - 1].Body;
                int j = b.Length;
                while (j > 0 && b[j - 1] is ' ' or '\t') j--;
                bool lineStart = j > 0 ? b[j - 1] == '\n' : k - 1 == 0;
                if (lineStart && j < b.Length) tokens[k - 1] = tokens[k - 1] with { Body = b[..j] };
            }
            for (int k = 0; k < tokens.Count; k++)
            {
                var t = tokens[k];
                if (t.Kind == Kind.Text) continue;
                if (t.TrimBefore && k > 0 && tokens[k - 1].Kind == Kind.Text)
                    tokens[k - 1] = tokens[k - 1] with { Body = tokens[k - 1].Body.TrimEnd() };
                if (k + 1 < tokens.Count && tokens[k + 1] is { Kind: Kind.Text } after)
                {
                    string a = after.Body;
                    if (t.TrimAfter) a = a.TrimStart();
                    else if (Block(t) && a.StartsWith('\n')) a = a[1..];
                    else if (Block(t) && a.StartsWith("\r\n")) a = a[2..];
                    tokens[k + 1] = after with { Body = a };
                }
            }
        }
    }

    // ---- syntax -------------------------------------------------------------------------------------------------

    private abstract record Node;
    private sealed record TextNode(string Text) : Node;
    private sealed record OutputNode(Expr Value) : Node;
    private sealed record IfNode(List<(Expr? Condition, List<Node> Body)> Branches) : Node;
    private sealed record ForNode(string Var, Expr Items, List<Node> Body, List<Node>? Else) : Node;
    private sealed record SetNode(string Name, Expr Value) : Node;

    private abstract record Expr;
    private sealed record Literal(object? Value) : Expr;
    private sealed record Name(string Id) : Expr;
    private sealed record ListExpr(List<Expr> Items) : Expr;
    private sealed record Attr(Expr Target, string Name) : Expr;
    private sealed record Index(Expr Target, Expr Key) : Expr;
    private sealed record Slice(Expr Target, Expr? Start, Expr? Stop) : Expr;
    private sealed record Call(Expr Target, List<Expr> Args) : Expr;
    private sealed record Filter(Expr Target, string Name, List<Expr> Args) : Expr;
    private sealed record Test(Expr Target, string Name, bool Negated) : Expr;
    private sealed record Unary(string Op, Expr Operand) : Expr;
    private sealed record Binary(string Op, Expr Left, Expr Right) : Expr;
    private sealed record Conditional(Expr Then, Expr Condition, Expr? Else) : Expr;

    private sealed class Parser(List<Token> tokens)
    {
        private int _at;

        public List<Node> Template()
        {
            var body = Block(out var end);
            if (end is not null) throw Unsupported(end, $"'{{% {end.Body} %}}' without its opening tag");
            return body;
        }

        /// <summary>Nodes up to a statement that ends this block (returned in <paramref name="end"/>), or the end.</summary>
        private List<Node> Block(out Token? end)
        {
            var nodes = new List<Node>();
            while (_at < tokens.Count)
            {
                var t = tokens[_at++];
                switch (t.Kind)
                {
                    case Kind.Text: nodes.Add(new TextNode(t.Body)); break;
                    case Kind.Output: nodes.Add(new OutputNode(Expression(t, t.Body))); break;
                    default:
                        string word = FirstWord(t.Body);
                        if (word is "endif" or "endfor" or "elif" or "else")
                        {
                            end = t;
                            return nodes;
                        }
                        nodes.Add(word switch
                        {
                            "if" => If(t),
                            "for" => For(t),
                            "set" => Set(t),
                            _ => throw Unsupported(t, $"'{{% {word} %}}' is not supported"),
                        });
                        break;
                }
            }
            end = null;
            return nodes;
        }

        private Node If(Token t)
        {
            var branches = new List<(Expr?, List<Node>)>();
            Expr? condition = Expression(t, t.Body[2..]);
            while (true)
            {
                var body = Block(out var end);
                branches.Add((condition, body));
                if (end is null) throw Unsupported(t, "'{% if %}' is never closed with '{% endif %}'");
                string word = FirstWord(end.Body);
                if (word == "endif") return new IfNode(branches);
                if (word == "elif") condition = Expression(end, end.Body[4..]);
                else if (word == "else")
                {
                    var elseBody = Block(out var close);
                    if (close is null || FirstWord(close.Body) != "endif") throw Unsupported(t, "'{% else %}' of an if must end with '{% endif %}'");
                    branches.Add((null, elseBody));
                    return new IfNode(branches);
                }
                else throw Unsupported(end, $"'{{% {word} %}}' inside an if");
            }
        }

        private Node For(Token t)
        {
            var lex = new ExprLexer(t, t.Body[3..]);
            string var = lex.Identifier();
            if (lex.Peek() == ",") throw Unsupported(t, "unpacking in '{% for %}' is not supported");
            lex.Expect("in");
            var items = new ExprParser(lex, t).Parse();
            if (!lex.AtEnd) throw Unsupported(t, $"'{lex.Peek()}' in '{{% for %}}' (filters on the loop and 'recursive' are not supported)");
            var body = Block(out var end);
            if (end is null) throw Unsupported(t, "'{% for %}' is never closed with '{% endfor %}'");
            List<Node>? elseBody = null;
            if (FirstWord(end.Body) == "else")
            {
                elseBody = Block(out end);
                if (end is null) throw Unsupported(t, "'{% for %}' is never closed with '{% endfor %}'");
            }
            if (FirstWord(end.Body) != "endfor") throw Unsupported(end, $"'{{% {end.Body} %}}' inside a for");
            return new ForNode(var, items, body, elseBody);
        }

        private Node Set(Token t)
        {
            var lex = new ExprLexer(t, t.Body[3..]);
            string name = lex.Identifier();
            if (lex.Peek() == ".") throw Unsupported(t, "'{% set x.attr = … %}' (namespace attributes) is not supported");
            if (lex.AtEnd) throw Unsupported(t, "block '{% set %}…{% endset %}' is not supported");
            lex.Expect("=");
            var value = new ExprParser(lex, t).Parse();
            if (!lex.AtEnd) throw Unsupported(t, $"unexpected '{lex.Peek()}' in '{{% set %}}'");
            return new SetNode(name, value);
        }

        public Expr Expression(Token t, string source)
        {
            var lex = new ExprLexer(t, source);
            var e = new ExprParser(lex, t).Parse();
            if (!lex.AtEnd) throw Unsupported(t, $"unexpected '{lex.Peek()}' in '{source.Trim()}'");
            return e;
        }

        private static string FirstWord(string body)
        {
            int i = 0;
            while (i < body.Length && (char.IsLetter(body[i]) || body[i] == '_')) i++;
            return body[..i];
        }
    }

    private static UnsupportedException Unsupported(Token t, string what) => new($"chat template line {t.Line}: {what}");

    private sealed class ExprLexer
    {
        private readonly List<string> _tokens = new();
        private readonly List<bool> _isString = new();
        private int _at;
        public Token Origin { get; }

        public ExprLexer(Token origin, string s)
        {
            Origin = origin;
            int i = 0;
            while (i < s.Length)
            {
                char c = s[i];
                if (char.IsWhiteSpace(c)) { i++; continue; }
                if (c is '\'' or '"')
                {
                    var sb = new StringBuilder();
                    int j = i + 1;
                    for (; j < s.Length && s[j] != c; j++)
                    {
                        if (s[j] == '\\' && j + 1 < s.Length)
                        {
                            j++;
                            sb.Append(s[j] switch { 'n' => '\n', 't' => '\t', 'r' => '\r', '\\' => '\\', '\'' => '\'', '"' => '"', var o => throw Unsupported(origin, $"the escape '\\{o}'") });
                        }
                        else sb.Append(s[j]);
                    }
                    if (j >= s.Length) throw Unsupported(origin, "an unterminated string");
                    _tokens.Add(sb.ToString());
                    _isString.Add(true);
                    i = j + 1;
                    continue;
                }
                if (char.IsDigit(c))
                {
                    int j = i;
                    while (j < s.Length && (char.IsDigit(s[j]) || s[j] == '.' && j + 1 < s.Length && char.IsDigit(s[j + 1]))) j++;
                    Add(s[i..j]);
                    i = j;
                    continue;
                }
                if (char.IsLetter(c) || c == '_')
                {
                    int j = i;
                    while (j < s.Length && (char.IsLetterOrDigit(s[j]) || s[j] == '_')) j++;
                    Add(s[i..j]);
                    i = j;
                    continue;
                }
                string two = i + 1 < s.Length ? s.Substring(i, 2) : "";
                if (two is "==" or "!=" or "<=" or ">=" or "//" or "**") { Add(two); i += 2; continue; }
                if ("+-*/%~<>()[]{}.,:|=".Contains(c)) { Add(c.ToString()); i++; continue; }
                throw Unsupported(origin, $"the character '{c}' in an expression");
            }
        }

        private void Add(string token)
        {
            _tokens.Add(token);
            _isString.Add(false);
        }

        public bool AtEnd => _at >= _tokens.Count;
        public string? Peek(int ahead = 0) => _at + ahead < _tokens.Count && !_isString[_at + ahead] ? _tokens[_at + ahead] : _at + ahead < _tokens.Count ? "\"string\"" : null;
        public bool PeekIsString => _at < _tokens.Count && _isString[_at];
        public string Next() => _tokens[_at++];
        public bool Accept(string token)
        {
            if (!PeekIsString && Peek() == token) { _at++; return true; }
            return false;
        }
        public void Expect(string token)
        {
            if (!Accept(token)) throw Unsupported(Origin, $"expected '{token}', found '{Peek() ?? "the end"}'");
        }
        public string Identifier()
        {
            if (AtEnd || PeekIsString || !(char.IsLetter(_tokens[_at][0]) || _tokens[_at][0] == '_')) throw Unsupported(Origin, $"expected a name, found '{Peek() ?? "the end"}'");
            return _tokens[_at++];
        }
    }

    /// <summary>Jinja's precedence: conditional, or, and, not, comparisons/in/is, ~ (with +/-), * / // %, unary, postfix (. [] () |).</summary>
    private sealed class ExprParser(ExprLexer lex, Token origin)
    {
        public Expr Parse()
        {
            var e = Or();
            if (lex.Accept("if"))
            {
                var condition = Or();
                Expr? otherwise = lex.Accept("else") ? Parse() : null;
                return new Conditional(e, condition, otherwise);
            }
            return e;
        }

        private Expr Or()
        {
            var e = And();
            while (lex.Accept("or")) e = new Binary("or", e, And());
            return e;
        }

        private Expr And()
        {
            var e = Not();
            while (lex.Accept("and")) e = new Binary("and", e, Not());
            return e;
        }

        private Expr Not() => lex.Accept("not") ? new Unary("not", Not()) : Compare();

        private Expr Compare()
        {
            var e = Concat();
            while (true)
            {
                if (lex.Peek() is "==" or "!=" or "<" or ">" or "<=" or ">=" && !lex.PeekIsString) e = new Binary(lex.Next(), e, Concat());
                else if (lex.Accept("in")) e = new Binary("in", e, Concat());
                else if (lex.Peek() == "not" && lex.Peek(1) == "in") { lex.Next(); lex.Next(); e = new Unary("not", new Binary("in", e, Concat())); }
                else if (lex.Accept("is"))
                {
                    bool negated = lex.Accept("not");
                    string test = lex.Identifier();
                    if (test is not ("defined" or "undefined" or "none" or "string" or "number" or "true" or "false"))
                        throw Unsupported(origin, $"the test 'is {test}' is not supported");
                    e = new Test(e, test, negated);
                }
                else return e;
            }
        }

        private Expr Concat()
        {
            var e = Term();
            while (lex.Peek() is "+" or "-" or "~" && !lex.PeekIsString) e = new Binary(lex.Next(), e, Term());
            return e;
        }

        private Expr Term()
        {
            var e = Unary();
            while (lex.Peek() is "*" or "/" or "//" or "%" && !lex.PeekIsString) e = new Binary(lex.Next(), e, Unary());
            return e;
        }

        private Expr Unary()
        {
            if (lex.Peek() == "-" && !lex.PeekIsString) { lex.Next(); return new Unary("-", Unary()); }
            if (lex.Peek() == "**") throw Unsupported(origin, "the operator '**' is not supported");
            return Postfix(Primary());
        }

        private Expr Postfix(Expr e)
        {
            while (true)
            {
                if (lex.Accept("."))
                {
                    e = new Attr(e, lex.Identifier());
                }
                else if (lex.Accept("["))
                {
                    Expr? start = lex.Peek() == ":" && !lex.PeekIsString ? null : Parse();
                    if (lex.Accept(":"))
                    {
                        Expr? stop = lex.Peek() == "]" && !lex.PeekIsString ? null : Parse();
                        if (lex.Peek() == ":") throw Unsupported(origin, "a slice step is not supported");
                        lex.Expect("]");
                        e = new Slice(e, start, stop);
                    }
                    else
                    {
                        lex.Expect("]");
                        e = new Index(e, start!);
                    }
                }
                else if (lex.Accept("("))
                {
                    e = new Call(e, Args());
                }
                else if (lex.Accept("|"))
                {
                    string name = lex.Identifier();
                    if (name is not ("trim" or "length" or "count" or "upper" or "lower" or "string" or "default" or "d"))
                        throw Unsupported(origin, $"the filter '| {name}' is not supported");
                    e = new Filter(e, name, lex.Accept("(") ? Args() : new List<Expr>());
                }
                else return e;
            }
        }

        private List<Expr> Args()
        {
            var args = new List<Expr>();
            if (lex.Accept(")")) return args;
            do
            {
                if (lex.Peek(1) == "=" && !lex.PeekIsString) throw Unsupported(origin, "keyword arguments are not supported");
                args.Add(Parse());
            } while (lex.Accept(","));
            lex.Expect(")");
            return args;
        }

        private Expr Primary()
        {
            if (lex.AtEnd) throw Unsupported(origin, "an expression ends too early");
            if (lex.PeekIsString)
            {
                var s = new StringBuilder(lex.Next());
                while (lex.PeekIsString) s.Append(lex.Next()); // adjacent literals join, as in Python
                return new Literal(s.ToString());
            }
            if (lex.Accept("("))
            {
                var e = Parse();
                if (lex.Peek() == ",") throw Unsupported(origin, "tuples are not supported");
                lex.Expect(")");
                return e;
            }
            if (lex.Accept("["))
            {
                var items = new List<Expr>();
                if (!lex.Accept("]"))
                {
                    do items.Add(Parse()); while (lex.Accept(","));
                    lex.Expect("]");
                }
                return new ListExpr(items);
            }
            if (lex.Peek() == "{") throw Unsupported(origin, "dict literals are not supported");
            string t = lex.Next();
            if (char.IsDigit(t[0]))
                return new Literal(t.Contains('.') ? (object)double.Parse(t, CultureInfo.InvariantCulture) : long.Parse(t, CultureInfo.InvariantCulture));
            return t switch
            {
                "true" or "True" => new Literal(true),
                "false" or "False" => new Literal(false),
                "none" or "None" => new Literal(null),
                _ when char.IsLetter(t[0]) || t[0] == '_' => new Name(t),
                _ => throw Unsupported(origin, $"unexpected '{t}'"),
            };
        }
    }

    // ---- evaluation ---------------------------------------------------------------------------------------------

    /// <summary>An undefined name or key: renders as "", is false, and fails anything else (as Jinja's default Undefined).</summary>
    private sealed class Undefined
    {
        public static readonly Undefined Value = new();
    }

    private sealed class TemplateError(string message) : Exception(message);

    private sealed class Interpreter(Dictionary<string, object?> globals, StringBuilder output)
    {
        private readonly List<Dictionary<string, object?>> _scopes = new() { globals };

        public void Run(List<Node> nodes)
        {
            try { Exec(nodes); }
            catch (TemplateError e) { throw new InvalidInputException($"chat template: {e.Message}"); }
        }

        private void Exec(List<Node> nodes)
        {
            foreach (var n in nodes)
            {
                switch (n)
                {
                    case TextNode t: output.Append(t.Text); break;
                    case OutputNode o: output.Append(Str(Eval(o.Value))); break;
                    case SetNode s: _scopes[^1][s.Name] = Eval(s.Value); break;
                    case IfNode i:
                        foreach (var (condition, body) in i.Branches)
                            if (condition is null || Truthy(Eval(condition)))
                            {
                                Exec(body);
                                break;
                            }
                        break;
                    case ForNode f: For(f); break;
                }
            }
        }

        private void For(ForNode f)
        {
            var items = Eval(f.Items) switch
            {
                List<object?> l => l,
                string s => s.Select(c => (object?)c.ToString()).ToList(),
                Undefined or null => new List<object?>(),
                var other => throw new TemplateError($"cannot loop over {TypeName(other)}"),
            };
            if (items.Count == 0)
            {
                if (f.Else is not null) Exec(f.Else);
                return;
            }
            // A for loop's sets stay inside it (Jinja scoping); the loop variable and `loop` too.
            var scope = new Dictionary<string, object?>(StringComparer.Ordinal);
            _scopes.Add(scope);
            try
            {
                for (int i = 0; i < items.Count; i++)
                {
                    scope.Clear();
                    scope[f.Var] = items[i];
                    scope["loop"] = new Dictionary<string, object?>
                    {
                        ["index"] = (long)i + 1, ["index0"] = (long)i, ["first"] = i == 0, ["last"] = i == items.Count - 1,
                        ["length"] = (long)items.Count, ["revindex"] = (long)(items.Count - i), ["revindex0"] = (long)(items.Count - i - 1),
                        ["previtem"] = i > 0 ? items[i - 1] : Undefined.Value, ["nextitem"] = i + 1 < items.Count ? items[i + 1] : Undefined.Value,
                    };
                    Exec(f.Body);
                }
            }
            finally { _scopes.RemoveAt(_scopes.Count - 1); }
        }

        private object? Lookup(string name)
        {
            for (int i = _scopes.Count - 1; i >= 0; i--)
                if (_scopes[i].TryGetValue(name, out var v)) return v;
            return name switch { "raise_exception" => new Builtin(name), "range" => new Builtin(name), _ => Undefined.Value };
        }

        private sealed record Builtin(string Name);
        private sealed record BoundMethod(string Target, string Name);

        private object? Eval(Expr e) => e switch
        {
            Literal l => l.Value,
            Name n => Lookup(n.Id),
            ListExpr l => l.Items.Select(Eval).ToList(),
            Attr a => Member(Eval(a.Target), a.Name),
            Index i => Item(Eval(i.Target), Eval(i.Key)),
            Slice s => SliceOf(Eval(s.Target), s.Start is null ? null : Eval(s.Start), s.Stop is null ? null : Eval(s.Stop)),
            Call c => Invoke(Eval(c.Target), c.Args.Select(Eval).ToList()),
            Filter f => ApplyFilter(f, Eval(f.Target)),
            Test t => t.Negated != TestValue(t.Name, Eval(t.Target)),
            Unary { Op: "not" } u => !Truthy(Eval(u.Operand)),
            Unary { Op: "-" } u => Eval(u.Operand) switch { long x => -x, double d => -d, var o => throw new TemplateError($"cannot negate {TypeName(o)}") },
            Binary { Op: "and" } b => Eval(b.Left) is var l && !Truthy(l) ? l : Eval(b.Right),
            Binary { Op: "or" } b => Eval(b.Left) is var l && Truthy(l) ? l : Eval(b.Right),
            Binary b => Operate(b.Op, Eval(b.Left), Eval(b.Right)),
            Conditional c => Truthy(Eval(c.Condition)) ? Eval(c.Then) : c.Else is null ? Undefined.Value : Eval(c.Else),
            _ => throw new TemplateError($"cannot evaluate {e.GetType().Name}"),
        };

        private static object? Member(object? target, string name) => target switch
        {
            Dictionary<string, object?> d => d.TryGetValue(name, out var v) ? v : Undefined.Value,
            string s when name is "strip" or "lstrip" or "rstrip" or "upper" or "lower" or "title" or "startswith" or "endswith" or "split" or "replace" => new BoundMethod(s, name),
            string => throw new TemplateError($"the string method '{name}' is not supported"),
            Undefined => throw new TemplateError($"'{name}' of an undefined value"),
            _ => Undefined.Value,
        };

        private static object? Item(object? target, object? key) => (target, key) switch
        {
            (Dictionary<string, object?> d, string k) => d.TryGetValue(k, out var v) ? v : Undefined.Value,
            (List<object?> l, long i) => i >= -l.Count && i < l.Count ? l[(int)(i < 0 ? i + l.Count : i)] : Undefined.Value,
            (string s, long i) => i >= -s.Length && i < s.Length ? s[(int)(i < 0 ? i + s.Length : i)].ToString() : Undefined.Value,
            (Undefined, _) => throw new TemplateError("indexing an undefined value"),
            _ => Undefined.Value,
        };

        private static object? SliceOf(object? target, object? start, object? stop)
        {
            int Bound(object? v, int length, int fallback) => v switch
            {
                null => fallback,
                long i => (int)Math.Clamp(i < 0 ? i + length : i, 0, length),
                _ => throw new TemplateError($"a slice bound must be an integer, not {TypeName(v)}"),
            };
            switch (target)
            {
                case List<object?> l:
                    {
                        int a = Bound(start, l.Count, 0), b = Bound(stop, l.Count, l.Count);
                        return b > a ? l.GetRange(a, b - a) : new List<object?>();
                    }
                case string s:
                    {
                        int a = Bound(start, s.Length, 0), b = Bound(stop, s.Length, s.Length);
                        return b > a ? s[a..b] : "";
                    }
                default: throw new TemplateError($"cannot slice {TypeName(target)}");
            }
        }

        private static object? Invoke(object? target, List<object?> args)
        {
            switch (target)
            {
                case Builtin { Name: "raise_exception" }:
                    throw new TemplateError(args.Count > 0 ? Str(args[0]) : "raise_exception");
                case Builtin { Name: "range" }:
                    {
                        long from = args.Count > 1 ? (long)Num(args[0]) : 0, to = (long)Num(args[^1]);
                        if (to - from > 100_000) throw new TemplateError("range() over more than 100000 items");
                        var list = new List<object?>();
                        for (long i = from; i < to; i++) list.Add(i);
                        return list;
                    }
                case BoundMethod m:
                    string s = m.Target;
                    string? Arg(int i) => args.Count > i ? Str(args[i]) : null;
                    return m.Name switch
                    {
                        "strip" => Arg(0) is { } cs ? s.Trim(cs.ToCharArray()) : s.Trim(),
                        "lstrip" => Arg(0) is { } cs ? s.TrimStart(cs.ToCharArray()) : s.TrimStart(),
                        "rstrip" => Arg(0) is { } cs ? s.TrimEnd(cs.ToCharArray()) : s.TrimEnd(),
                        "upper" => s.ToUpperInvariant(),
                        "lower" => s.ToLowerInvariant(),
                        "title" => CultureInfo.InvariantCulture.TextInfo.ToTitleCase(s.ToLowerInvariant()),
                        "startswith" => s.StartsWith(Arg(0) ?? "", StringComparison.Ordinal),
                        "endswith" => s.EndsWith(Arg(0) ?? "", StringComparison.Ordinal),
                        "split" => (Arg(0) is { } sep ? s.Split(sep) : s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)).Select(x => (object?)x).ToList(),
                        "replace" => s.Replace(Arg(0) ?? "", Arg(1) ?? "", StringComparison.Ordinal),
                        _ => throw new TemplateError($"the string method '{m.Name}' is not supported"),
                    };
                default:
                    throw new TemplateError($"{TypeName(target)} is not callable");
            }
        }

        private object? ApplyFilter(Filter f, object? v)
        {
            switch (f.Name)
            {
                case "default" or "d": return v is Undefined ? (f.Args.Count > 0 ? Eval(f.Args[0]) : "") : v;
                case "trim": return Str(v).Trim();
                case "upper": return Str(v).ToUpperInvariant();
                case "lower": return Str(v).ToLowerInvariant();
                case "string": return Str(v);
                default: // length, count
                    return v switch
                    {
                        string s => (long)s.Length,
                        List<object?> l => (long)l.Count,
                        Dictionary<string, object?> d => (long)d.Count,
                        _ => throw new TemplateError($"length of {TypeName(v)}"),
                    };
            }
        }

        private static bool TestValue(string test, object? v) => test switch
        {
            "defined" => v is not Undefined,
            "undefined" => v is Undefined,
            "none" => v is null,
            "string" => v is string,
            "number" => v is long or double,
            "true" => v is true,
            "false" => v is false,
            _ => throw new TemplateError($"the test '{test}'"),
        };

        private static object? Operate(string op, object? a, object? b)
        {
            switch (op)
            {
                case "==": return Equal(a, b);
                case "!=": return !Equal(a, b);
                case "in":
                    return b switch
                    {
                        string hay => hay.Contains(Str(a), StringComparison.Ordinal),
                        List<object?> l => l.Any(x => Equal(x, a)),
                        Dictionary<string, object?> d => a is string k && d.ContainsKey(k),
                        _ => throw new TemplateError($"'in' {TypeName(b)}"),
                    };
                case "~": return Str(a) + Str(b);
                case "+" when a is string sa && b is string sb: return sa + sb;
                case "+" when a is List<object?> la && b is List<object?> lb: return la.Concat(lb).ToList();
                case "+" when a is string || b is string: throw new TemplateError($"cannot add {TypeName(a)} and {TypeName(b)}");
                case "<" or ">" or "<=" or ">=" when a is string x && b is string y:
                    {
                        int c = string.CompareOrdinal(x, y);
                        return op switch { "<" => c < 0, ">" => c > 0, "<=" => c <= 0, _ => c >= 0 };
                    }
            }
            if (a is long i && b is long j)
                return op switch
                {
                    "+" => i + j, "-" => i - j, "*" => i * j,
                    "/" => j == 0 ? throw new TemplateError("division by zero") : (double)i / j,
                    "//" => j == 0 ? throw new TemplateError("division by zero") : (long)Math.Floor((double)i / j),
                    "%" => j == 0 ? throw new TemplateError("modulo by zero") : ((i % j) + j) % j,
                    "<" => i < j, ">" => i > j, "<=" => i <= j, ">=" => i >= j,
                    _ => throw new TemplateError($"the operator '{op}'"),
                };
            if (a is long or double && b is long or double)
            {
                double x = Num(a), y = Num(b);
                return op switch
                {
                    "+" => x + y, "-" => x - y, "*" => x * y, "/" => x / y, "//" => Math.Floor(x / y), "%" => x - y * Math.Floor(x / y),
                    "<" => x < y, ">" => x > y, "<=" => x <= y, ">=" => x >= y,
                    _ => throw new TemplateError($"the operator '{op}'"),
                };
            }
            if (op == "*" && a is string s && b is long n) return string.Concat(Enumerable.Repeat(s, (int)Math.Clamp(n, 0, 10_000)));
            throw new TemplateError($"'{op}' between {TypeName(a)} and {TypeName(b)}");
        }

        private static bool Equal(object? a, object? b) => (a, b) switch
        {
            (null, null) => true,
            (long x, double y) => x == y,
            (double x, long y) => x == y,
            (bool x, long y) => (x ? 1 : 0) == y,
            (long x, bool y) => x == (y ? 1 : 0),
            (Undefined, Undefined) => true,
            (List<object?> x, List<object?> y) => x.Count == y.Count && x.Zip(y).All(p => Equal(p.First, p.Second)),
            _ => Equals(a, b),
        };

        private static double Num(object? v) => v switch
        {
            long l => l,
            double d => d,
            bool b => b ? 1 : 0,
            _ => throw new TemplateError($"a number was expected, not {TypeName(v)}"),
        };

        private static bool Truthy(object? v) => v switch
        {
            null or Undefined => false,
            bool b => b,
            long l => l != 0,
            double d => d != 0,
            string s => s.Length > 0,
            List<object?> l => l.Count > 0,
            Dictionary<string, object?> d => d.Count > 0,
            _ => true,
        };

        private static string Str(object? v) => v switch
        {
            null => "None",
            Undefined => "",
            string s => s,
            bool b => b ? "True" : "False",
            long l => l.ToString(CultureInfo.InvariantCulture),
            double d => d == Math.Floor(d) && Math.Abs(d) < 1e16 ? d.ToString("0.0", CultureInfo.InvariantCulture) : d.ToString("R", CultureInfo.InvariantCulture),
            List<object?> l => "[" + string.Join(", ", l.Select(Repr)) + "]",
            Dictionary<string, object?> d => "{" + string.Join(", ", d.Select(kv => $"'{kv.Key}': {Repr(kv.Value)}")) + "}",
            _ => v.ToString() ?? "",
        };

        private static string Repr(object? v) => v is string s ? "'" + s.Replace("\\", "\\\\").Replace("'", "\\'") + "'" : Str(v);

        private static string TypeName(object? v) => v switch
        {
            null => "None",
            Undefined => "an undefined value",
            string => "a string",
            long => "an integer",
            double => "a float",
            bool => "a boolean",
            List<object?> => "a list",
            Dictionary<string, object?> => "a dict",
            _ => v.GetType().Name,
        };
    }
}
