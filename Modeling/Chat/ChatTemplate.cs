using System.Globalization;

namespace ShardPipe.Modeling.Chat;

/// <summary>
/// One Jinja template (a chat template) parsed once and rendered many times, with jinja2's semantics under
/// transformers' settings (trim_blocks, lstrip_blocks, loopcontrols, its tojson, raise_exception, strftime_now).
/// Any failure is a <see cref="ChatTemplateException"/> naming the template and line.
/// </summary>
public sealed class ChatTemplate
{
    private readonly List<Stmt> _body;

    /// <summary>The template's name in errors: "default", "tool_use", or the file it came from.</summary>
    public string Name { get; }
    public string Source { get; }

    private ChatTemplate(string name, string source, List<Stmt> body)
    {
        Name = name;
        Source = source;
        _body = body;
    }

    public static ChatTemplate Parse(string source, string name = "chat_template")
    {
        try { return new ChatTemplate(name, source, JinjaParser.Parse(source)); }
        catch (JinjaSyntaxError e) { throw new ChatTemplateException(name, e.Line, e.Message); }
    }

    /// <summary>
    /// Renders with these variables (values as <see cref="Py"/> describes: dicts, lists, strings, numbers, null).
    /// <paramref name="now"/> is strftime_now's clock: SHARDPIPE_CHAT_DATE (YYYY-MM-DD) when set, else the local time.
    /// </summary>
    public string Render(IReadOnlyDictionary<string, object?> variables, DateTime? now = null, RenderLimits? limits = null)
    {
        var interpreter = new Interpreter(limits ?? RenderLimits.Default, now ?? Clock());
        try { return interpreter.Run(_body, variables); }
        catch (TemplateRaised e) { throw new ChatTemplateException(Name, interpreter.Line, e.Message); }
        catch (JinjaError e) { throw new ChatTemplateException(Name, interpreter.Line, e.Message); }
        catch (InsufficientExecutionStackException) { throw new ChatTemplateException(Name, interpreter.Line, "the template nests too deeply"); }
    }

    /// <summary>The clock templates see: SHARDPIPE_CHAT_DATE=YYYY-MM-DD pins it (midnight) for reproducible renders.</summary>
    public static DateTime Clock()
    {
        string? pinned = Environment.GetEnvironmentVariable("SHARDPIPE_CHAT_DATE");
        if (string.IsNullOrEmpty(pinned)) return DateTime.Now;
        return DateTime.TryParseExact(pinned, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out var d) ? d
            : throw new InvalidInputException($"SHARDPIPE_CHAT_DATE='{pinned}' must be a date as YYYY-MM-DD");
    }
}
