using Spectre.Console;

namespace ShardPipe.Host.Cli;

/// <summary>
/// The CLI's human-readable tables (stdout), drawn by Spectre.Console: box lines on a terminal, plain ASCII when
/// stdout is redirected. <c>--json</c> output never goes through here.
/// </summary>
public static class Tables
{
    private static readonly Lazy<IAnsiConsole> Stdout = new(() => AnsiConsole.Create(new AnsiConsoleSettings
    {
        Out = new AnsiConsoleOutput(Console.Out),
        Ansi = Console.IsOutputRedirected ? AnsiSupport.No : AnsiSupport.Detect,
        ColorSystem = Console.IsOutputRedirected ? ColorSystemSupport.NoColors : ColorSystemSupport.Detect,
    }));

    /// <summary>A table with the given columns (a name ending in '>' is right-aligned, without the marker).</summary>
    public static void Print(string[] columns, IEnumerable<string[]> rows, string? title = null)
    {
        var table = new Table { Border = Console.IsOutputRedirected ? TableBorder.Ascii : TableBorder.Rounded };
        if (title is not null) table.Title = new TableTitle(Markup.Escape(title));
        foreach (var c in columns)
        {
            bool right = c.EndsWith('>');
            var column = new TableColumn(Markup.Escape(right ? c[..^1] : c));
            table.AddColumn(right ? column.RightAligned() : column);
        }
        foreach (var r in rows) table.AddRow(r.Select(cell => new Text(cell)).ToArray());
        Stdout.Value.Write(table);
    }

    /// <summary>A plain line on stdout, never wrapped (the console writes tables and lines in order).</summary>
    public static void Line(string text)
    {
        Console.Out.WriteLine(text);
        Console.Out.Flush();
    }
}
