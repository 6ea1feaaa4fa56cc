namespace ShardPipe;

/// <summary>Base of every error ShardPipe raises on purpose: the message names the file, tensor or node at fault.</summary>
public class ShardPipeException : Exception
{
    public ShardPipeException(string message, Exception? inner = null) : base(message, inner) { }

    /// <summary>
    /// What to report of a failure that crossed tasks or threads: the outermost <see cref="ShardPipeException"/> in
    /// the chain — it names the file, tensor or node — else the innermost exception's message (task wrappers and
    /// reflection add nothing). <c>GetBaseException()</c> alone would drop the name a typed error put around a
    /// parser's exception (<c>config.json: not valid JSON (…)</c> → <c>'x' is an invalid start…</c>).
    /// </summary>
    public static string Describe(Exception ex)
    {
        Exception innermost = ex;
        for (Exception? e = ex; e is not null; e = e is AggregateException { InnerExceptions.Count: 1 } a ? a.InnerExceptions[0] : e.InnerException)
        {
            if (e is ShardPipeException) return e.Message;
            innermost = e;
        }
        return innermost.Message;
    }
}

/// <summary>A checkpoint file (safetensors, index or config) breaks the format; names the file and, where known, the tensor.</summary>
public sealed class CheckpointFormatException : ShardPipeException
{
    public string File { get; }
    public string? Tensor { get; }

    public CheckpointFormatException(string file, string? tensor, string problem, Exception? inner = null)
        : base(Compose(file, tensor, problem), inner)
    {
        File = file;
        Tensor = tensor;
    }

    private static string Compose(string file, string? tensor, string problem) =>
        tensor is null ? $"{Path.GetFileName(file)}: {problem}" : $"{Path.GetFileName(file)}: '{tensor}': {problem}";
}

/// <summary>A model folder, repo id, revision or weights file could not be found; lists the paths tried.</summary>
public sealed class CheckpointNotFoundException : ShardPipeException
{
    public IReadOnlyList<string> PathsTried { get; }

    public CheckpointNotFoundException(string message, IReadOnlyList<string> pathsTried)
        : base(pathsTried.Count == 0 ? message : $"{message} (tried: {string.Join(", ", pathsTried)})")
    {
        PathsTried = pathsTried;
    }
}

/// <summary>A checkpoint tensor does not fit the model's parameter; lists every mismatch found.</summary>
public sealed class ShapeMismatchException : ShardPipeException
{
    public ShapeMismatchException(string message) : base(message) { }
}

/// <summary>A state dict does not cover the model (or carries extra keys) under strict loading.</summary>
public sealed class LoadingException : ShardPipeException
{
    public LoadingException(string message) : base(message) { }
}

/// <summary>A device map or memory budget that cannot be honoured; says what is missing and where.</summary>
public sealed class PlacementException : ShardPipeException
{
    public PlacementException(string message) : base(message) { }
}

/// <summary>Bytes or a manifest on the wire that do not form a known message; names the manifest.</summary>
public sealed class ProtocolException : ShardPipeException
{
    public ProtocolException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A cluster operation failed (node lost, stage stalled, no workers); names the node or stage.</summary>
public sealed class ClusterException : ShardPipeException
{
    public ClusterException(string message) : base(message) { }
}

/// <summary>
/// Input from a user or caller that cannot be used as given (an option, an argument, a request field); names the
/// field and says what would be accepted.
/// </summary>
public sealed class InvalidInputException : ShardPipeException
{
    public InvalidInputException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>Something well-formed that this build or model cannot do (an architecture, a dtype, a device); names it.</summary>
public sealed class UnsupportedException : ShardPipeException
{
    public UnsupportedException(string message) : base(message) { }
}

/// <summary>
/// A chat template that cannot be parsed or that fails while rendering (its own raise_exception, an undefined value
/// used, a render budget passed); names the template and the line.
/// </summary>
public sealed class ChatTemplateException : ShardPipeException
{
    public string Template { get; }
    public int Line { get; }

    public ChatTemplateException(string template, int line, string problem)
        : base($"chat template '{template}'{(line > 0 ? $" line {line}" : "")}: {problem}")
    {
        Template = template;
        Line = line;
    }
}
