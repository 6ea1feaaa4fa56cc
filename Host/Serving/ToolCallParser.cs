using System.Text.Json;
using System.Text.Json.Nodes;

namespace ShardPipe.Host.Serving;

/// <summary>One function call the model asked for: OpenAI's <c>tool_calls[i]</c> (arguments as a JSON string).</summary>
public sealed record ToolCall(string Id, string Name, string Arguments)
{
    public JsonObject ToJson(int? index = null)
    {
        var o = new JsonObject();
        if (index is { } i) o["index"] = i;
        o["id"] = Id;
        o["type"] = "function";
        o["function"] = new JsonObject { ["name"] = Name, ["arguments"] = Arguments };
        return o;
    }
}

/// <summary>
/// Reads tool calls out of a model's text in the formats the common chat templates teach: Hermes/Qwen
/// (<c>&lt;tool_call&gt;{"name": …, "arguments": {…}}&lt;/tool_call&gt;</c>, text before it is content), Llama 3.x JSON
/// (the whole reply is <c>{"name": …, "parameters": {…}}</c>, optionally after <c>&lt;|python_tag|&gt;</c>, several
/// joined by ';'), and Mistral (<c>[TOOL_CALLS][{"name": …, "arguments": {…}}, …]</c> or <c>[TOOL_CALLS]name[ARGS]{…}</c>).
/// With a named tool_choice, a bare JSON object is that function's arguments. Text that is none of these is content.
/// </summary>
public static class ToolCallParser
{
    public const string HermesOpen = "<tool_call>", HermesClose = "</tool_call>", MistralMarker = "[TOOL_CALLS]", PythonTag = "<|python_tag|>";

    public sealed record Parsed(string? Content, IReadOnlyList<ToolCall> Calls);

    public static Parsed Parse(string text, string? forcedFunction = null)
    {
        int hermes = text.IndexOf(HermesOpen, StringComparison.Ordinal);
        if (hermes >= 0 && Hermes(text[hermes..]) is { Count: > 0 } hc) return new(NullIfBlank(text[..hermes]), hc);
        int mistral = text.IndexOf(MistralMarker, StringComparison.Ordinal);
        if (mistral >= 0 && Mistral(text[(mistral + MistralMarker.Length)..]) is { Count: > 0 } mc) return new(NullIfBlank(text[..mistral]), mc);
        string body = text.Trim();
        if (body.StartsWith(PythonTag, StringComparison.Ordinal)) body = body[PythonTag.Length..].Trim();
        if (body.StartsWith('{'))
        {
            var calls = new List<ToolCall>();
            foreach (var part in SplitTopLevel(body, ';'))
            {
                if (ParseObject(part) is not { } o) { calls.Clear(); break; }
                if ((Call(o, "parameters") ?? Call(o, "arguments")) is { } c) calls.Add(c);
                else if (forcedFunction is not null) calls.Add(new ToolCall(NewId(), forcedFunction, o.ToJsonString()));
                else { calls.Clear(); break; }
            }
            if (calls.Count > 0) return new(null, calls);
        }
        return new(text, Array.Empty<ToolCall>());
    }

    /// <summary>How much of the text so far can be shown as content while streaming: up to where a tool call may begin.</summary>
    public static int SafeContentLength(string text)
    {
        foreach (var marker in new[] { HermesOpen, MistralMarker })
        {
            int at = text.IndexOf(marker, StringComparison.Ordinal);
            if (at >= 0) return at;
        }
        string trimmed = text.TrimStart();
        // A reply that opens like JSON or the python tag may be a whole-reply call: hold it all.
        if (trimmed.Length == 0 || trimmed.StartsWith('{') || PythonTag.StartsWith(trimmed, StringComparison.Ordinal) || trimmed.StartsWith(PythonTag, StringComparison.Ordinal))
            return 0;
        // Hold back a tail that could be the start of a marker.
        for (int keep = Math.Min(text.Length, MistralMarker.Length); keep > 0; keep--)
        {
            string tail = text[^keep..];
            if (HermesOpen.StartsWith(tail, StringComparison.Ordinal) || MistralMarker.StartsWith(tail, StringComparison.Ordinal)) return text.Length - keep;
        }
        return text.Length;
    }

    private static List<ToolCall> Hermes(string text)
    {
        var calls = new List<ToolCall>();
        int pos = 0;
        while ((pos = text.IndexOf(HermesOpen, pos, StringComparison.Ordinal)) >= 0)
        {
            int start = pos + HermesOpen.Length;
            int end = text.IndexOf(HermesClose, start, StringComparison.Ordinal);
            string inner = end >= 0 ? text[start..end] : text[start..];
            if (ParseObject(inner) is not { } o || (Call(o, "arguments") ?? Call(o, "parameters")) is not { } c) return new List<ToolCall>();
            calls.Add(c);
            if (end < 0) break;
            pos = end + HermesClose.Length;
        }
        return calls;
    }

    private static List<ToolCall> Mistral(string text)
    {
        text = text.Trim();
        var calls = new List<ToolCall>();
        if (text.StartsWith('['))
        {
            try
            {
                if (JsonNode.Parse(text) is JsonArray a)
                    foreach (var item in a)
                        if (item is JsonObject o && (Call(o, "arguments") ?? Call(o, "parameters")) is { } c) calls.Add(c);
                        else return new List<ToolCall>();
            }
            catch (JsonException) { return new List<ToolCall>(); }
            return calls;
        }
        // The v11 form: [TOOL_CALLS]name[ARGS]{…}, repeated.
        foreach (var piece in text.Split(MistralMarker))
        {
            int args = piece.IndexOf("[ARGS]", StringComparison.Ordinal);
            if (args <= 0 || ParseObject(piece[(args + 6)..]) is not { } o) return new List<ToolCall>();
            calls.Add(new ToolCall(NewId(), piece[..args].Trim(), o.ToJsonString()));
        }
        return calls;
    }

    private static ToolCall? Call(JsonObject o, string argumentsKey)
    {
        if (o["name"] is not JsonValue n || !n.TryGetValue(out string? name) || name.Length == 0 || !o.ContainsKey(argumentsKey)) return null;
        string args = o[argumentsKey] switch
        {
            JsonValue v when v.TryGetValue(out string? s) => s, // already a JSON string
            null => "{}",
            var x => x.ToJsonString(),
        };
        return new ToolCall(NewId(), name, args);
    }

    private static JsonObject? ParseObject(string s)
    {
        try { return JsonNode.Parse(s.Trim()) as JsonObject; }
        catch (JsonException) { return null; }
    }

    private static IEnumerable<string> SplitTopLevel(string s, char sep)
    {
        int depth = 0, start = 0;
        bool inString = false;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (inString) { if (c == '\\') i++; else if (c == '"') inString = false; continue; }
            if (c == '"') inString = true;
            else if (c is '{' or '[') depth++;
            else if (c is '}' or ']') depth--;
            else if (c == sep && depth == 0) { yield return s[start..i]; start = i + 1; }
        }
        if (start < s.Length && s[start..].Trim().Length > 0) yield return s[start..];
    }

    private static string? NullIfBlank(string s) => s.Trim().Length == 0 ? null : s.TrimEnd();

    public static string NewId() => "call_" + Guid.NewGuid().ToString("N")[..24];
}
