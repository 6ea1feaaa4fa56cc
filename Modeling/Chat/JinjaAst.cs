namespace ShardPipe.Modeling.Chat;

// The syntax tree of a Jinja template: statements (Stmt) render, expressions (Expr) evaluate. Each node keeps its line.

public abstract record Stmt(int Line);
public sealed record TextStmt(string Text, int Line) : Stmt(Line);
public sealed record OutputStmt(Expr Value, int Line) : Stmt(Line);
public sealed record IfStmt(List<(Expr Test, List<Stmt> Body)> Branches, List<Stmt>? Else, int Line) : Stmt(Line);
public sealed record ForStmt(Expr Target, Expr Iter, Expr? Filter, List<Stmt> Body, List<Stmt>? Else, bool Recursive, int Line) : Stmt(Line);
public sealed record SetStmt(Expr Target, Expr Value, int Line) : Stmt(Line);
public sealed record SetBlockStmt(Expr Target, List<FilterExpr> Filters, List<Stmt> Body, int Line) : Stmt(Line);
public sealed record MacroStmt(string Name, List<(string Name, Expr? Default)> Params, List<Stmt> Body, int Line) : Stmt(Line);
public sealed record CallBlockStmt(CallExpr Call, List<(string Name, Expr? Default)> Params, List<Stmt> Body, int Line) : Stmt(Line);
public sealed record FilterBlockStmt(List<FilterExpr> Filters, List<Stmt> Body, int Line) : Stmt(Line);
public sealed record WithStmt(List<(Expr Target, Expr Value)> Assignments, List<Stmt> Body, int Line) : Stmt(Line);
public sealed record BreakStmt(int Line) : Stmt(Line);
public sealed record ContinueStmt(int Line) : Stmt(Line);
/// <summary>transformers' <c>{% generation %}</c> (AssistantTracker): renders its body.</summary>
public sealed record GenerationStmt(List<Stmt> Body, int Line) : Stmt(Line);

public abstract record Expr(int Line);
public sealed record ConstExpr(object? Value, int Line) : Expr(Line);
public sealed record NameExpr(string Name, int Line) : Expr(Line);
public sealed record TupleExpr(List<Expr> Items, int Line) : Expr(Line);
public sealed record ListExpr(List<Expr> Items, int Line) : Expr(Line);
public sealed record DictExpr(List<(Expr Key, Expr Value)> Items, int Line) : Expr(Line);
public sealed record AttrExpr(Expr Target, string Name, int Line) : Expr(Line);
public sealed record ItemExpr(Expr Target, Expr Index, int Line) : Expr(Line);
public sealed record SliceExpr(Expr? Start, Expr? Stop, Expr? Step, int Line) : Expr(Line);
public sealed record CallExpr(Expr Callee, List<Expr> Args, List<(string Name, Expr Value)> Kwargs, Expr? DynArgs, Expr? DynKwargs, int Line) : Expr(Line);
public sealed record FilterExpr(Expr? Target, string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs, int Line) : Expr(Line);
public sealed record TestExpr(Expr Target, string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs, bool Negated, int Line) : Expr(Line);
public sealed record UnaryExpr(string Op, Expr Operand, int Line) : Expr(Line);
public sealed record BinaryExpr(string Op, Expr Left, Expr Right, int Line) : Expr(Line);
public sealed record CompareExpr(Expr First, List<(string Op, Expr Right)> Rest, int Line) : Expr(Line);
public sealed record CondExpr(Expr Test, Expr Then, Expr? Else, int Line) : Expr(Line);
