using System.Text.Json;
using System.Text.Json.Nodes;
using ShardPipe.Modeling.Chat;

namespace ShardPipe.Host.Serving;

/// <summary>
/// An OpenAI <c>/v1/chat/completions</c> request: the messages (role, content as a string or a list of text parts,
/// an assistant's <c>tool_calls</c>, a tool result's <c>tool_call_id</c>), <c>tools</c>, <c>tool_choice</c>
/// (<c>auto</c>, <c>none</c>, <c>required</c> or a named function), <c>chat_template_kwargs</c>,
/// <c>add_generation_prompt</c> / <c>continue_final_message</c> (vLLM's), and the fields completions share; all
/// checked before anything runs.
/// </summary>
/// <param name="MaxTokensGiven">Whether the request set max_tokens: chat's has no fixed default (up to the context).</param>
/// <param name="ToolChoice">"auto", "none", "required", or the name of the function the request forces.</param>
public sealed record ChatRequest(CompletionRequest Common, ChatInput Input, bool MaxTokensGiven, string ToolChoice, bool ForcedFunction)
{
    /// <summary>Whether the reply is read for tool calls.</summary>
    public bool ParsesToolCalls => Input.Tools is { Count: > 0 } && ToolChoice != "none";

    public static ChatRequest Parse(JsonNode? body, int maxTokensCap)
    {
        if (body is not JsonObject o) throw OpenAiException.Invalid("the request body must be a JSON object", null);
        if (o["messages"] is not JsonArray list || list.Count == 0) throw OpenAiException.Invalid("'messages' must be a non-empty list", "messages");
        var messages = list.Select((m, i) => (object?)Message(m, i)).ToList();
        foreach (var key in new[] { "functions", "function_call", "response_format", "logprobs" })
            if (o[key] is { } v && v.ToJsonString() is not ("null" or "false"))
                throw OpenAiException.Invalid($"'{key}' is not supported by this server", key);
        var tools = o["tools"] switch
        {
            null => null,
            JsonArray a => a.Select((t, i) => (object?)Py.FromJson(Tool(t, i))).ToList(),
            _ => throw OpenAiException.Invalid("'tools' must be a list of {\"type\": \"function\", \"function\": {…}}", "tools"),
        };
        var names = tools?.OfType<Dictionary<string, object?>>().Select(t => (t["function"] as Dictionary<string, object?>)?["name"] as string).ToHashSet() ?? new HashSet<string?>();
        (string choice, bool forced) = o["tool_choice"] switch
        {
            null => (tools is null ? "none" : "auto", false),
            JsonValue v when v.TryGetValue(out string? s) && s is "auto" or "none" or "required" =>
                s != "none" && tools is null ? throw OpenAiException.Invalid($"'tool_choice' is '{s}' but the request has no 'tools'", "tool_choice") : (s!, false),
            JsonObject f when f["function"] is JsonObject fn && fn["name"] is JsonValue nv && nv.TryGetValue(out string? name) =>
                names.Contains(name) ? (name, true) : throw OpenAiException.Invalid($"'tool_choice' names '{name}', which is not among 'tools'", "tool_choice"),
            _ => throw OpenAiException.Invalid("'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}", "tool_choice"),
        };
        var kwargs = o["chat_template_kwargs"] switch
        {
            null => new Dictionary<string, object?>(),
            JsonObject k => (Dictionary<string, object?>)Py.FromJson(k)!,
            _ => throw OpenAiException.Invalid("'chat_template_kwargs' must be an object", "chat_template_kwargs"),
        };
        bool cont = CompletionRequest.Bool(o, "continue_final_message") ?? false;
        bool addPrompt = CompletionRequest.Bool(o, "add_generation_prompt") ?? !cont;
        if (cont && addPrompt) throw OpenAiException.Invalid("'continue_final_message' and 'add_generation_prompt' cannot both be true", "continue_final_message");
        var input = new ChatInput
        {
            Messages = messages,
            Tools = tools,
            AddGenerationPrompt = addPrompt,
            ContinueFinalMessage = cont,
            Kwargs = kwargs,
        };
        var common = CompletionRequest.ReadCommon(o, maxTokensCap, defaultMaxTokens: null);
        return new ChatRequest(common, input, o["max_tokens"] is not null || o["max_completion_tokens"] is not null, choice, forced);
    }

    private static JsonObject Tool(JsonNode? t, int i) =>
        t is JsonObject o && o["type"] is JsonValue ty && ty.TryGetValue(out string? type) && type == "function"
        && o["function"] is JsonObject f && f["name"] is JsonValue n && n.TryGetValue(out string? name) && name.Length > 0
            ? o : throw OpenAiException.Invalid($"'tools[{i}]' must be {{\"type\": \"function\", \"function\": {{\"name\": …, \"parameters\": …}}}}", "tools");

    /// <summary>
    /// A message as templates expect it: the role (developer → system), content as given (a string, or text parts),
    /// an assistant's tool_calls with their arguments parsed from the JSON string OpenAI sends into an object (as vLLM does:
    /// templates write them with tojson), a tool's tool_call_id and name.
    /// </summary>
    private static Dictionary<string, object?> Message(JsonNode? m, int i)
    {
        string field = $"messages[{i}]";
        if (m is not JsonObject o) throw OpenAiException.Invalid($"'{field}' must be an object", "messages");
        string role = o["role"] is JsonValue r && r.TryGetValue(out string? rs) && rs is "system" or "user" or "assistant" or "developer" or "tool" ? rs!
            : throw OpenAiException.Invalid($"'{field}.role' must be system, developer, user, assistant or tool", "messages");
        var message = new Dictionary<string, object?>(StringComparer.Ordinal) { ["role"] = role == "developer" ? "system" : role };
        switch (o["content"])
        {
            case JsonValue v when v.TryGetValue(out string? s): message["content"] = s; break;
            case JsonArray parts:
                for (int k = 0; k < parts.Count; k++)
                    if (!(parts[k] is JsonObject po && po["type"] is JsonValue t && t.TryGetValue(out string? ts) && ts == "text" && po["text"] is JsonValue tv && tv.GetValueKind() == JsonValueKind.String))
                        throw OpenAiException.Invalid($"'{field}.content[{k}]' must be a text part ({{\"type\": \"text\", \"text\": …}}); other parts are not supported", "messages");
                message["content"] = Py.FromJson(parts);
                break;
            case null when role is "assistant": message["content"] = ""; break; // as vLLM: a tool-calling reply without text has empty content
            default: throw OpenAiException.Invalid($"'{field}.content' must be a string or a list of text parts", "messages");
        }
        if (o["tool_calls"] is JsonArray calls && role == "assistant")
        {
            var list = new List<object?>();
            for (int k = 0; k < calls.Count; k++)
            {
                if (calls[k] is not JsonObject c || c["function"] is not JsonObject f || f["name"] is not JsonValue n || !n.TryGetValue(out string? _))
                    throw OpenAiException.Invalid($"'{field}.tool_calls[{k}]' must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}", "messages");
                var call = (Dictionary<string, object?>)Py.FromJson(c)!;
                var fn = (Dictionary<string, object?>)call["function"]!;
                if (fn.GetValueOrDefault("arguments") is string args)
                {
                    try { fn["arguments"] = Py.FromJson(JsonNode.Parse(args)); }
                    catch (JsonException) { throw OpenAiException.Invalid($"'{field}.tool_calls[{k}].function.arguments' is not valid JSON", "messages"); }
                }
                list.Add(call);
            }
            message["tool_calls"] = list;
        }
        foreach (var key in new[] { "tool_call_id", "name", "reasoning_content" })
            if (o[key] is JsonValue kv && kv.TryGetValue(out string? ks)) message[key] = ks;
        return message;
    }
}
