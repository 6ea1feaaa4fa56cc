using System.Text.Json.Nodes;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Serving;

/// <summary>
/// An OpenAI <c>/v1/chat/completions</c> request: the messages (each a role and text content — a string, or a list of
/// <c>{"type": "text"}</c> parts) and the fields completions share, checked before anything runs.
/// </summary>
/// <param name="MaxTokensGiven">Whether the request set max_tokens: chat's has no fixed default (up to the context).</param>
public sealed record ChatRequest(CompletionRequest Common, IReadOnlyList<ChatMessage> Messages, bool MaxTokensGiven)
{
    public static ChatRequest Parse(JsonNode? body, int maxTokensCap)
    {
        if (body is not JsonObject o) throw OpenAiException.Invalid("the request body must be a JSON object", null);
        if (o["messages"] is not JsonArray list || list.Count == 0) throw OpenAiException.Invalid("'messages' must be a non-empty list", "messages");
        var messages = list.Select((m, i) => Message(m, i)).ToList();
        foreach (var key in new[] { "tools", "tool_choice", "functions", "function_call", "response_format", "logprobs" })
            if (o[key] is { } v && v.ToJsonString() is not ("null" or "false"))
                throw OpenAiException.Invalid($"'{key}' is not supported by this server", key);
        var common = CompletionRequest.ReadCommon(o, maxTokensCap, defaultMaxTokens: null);
        return new ChatRequest(common, messages, o["max_tokens"] is not null || o["max_completion_tokens"] is not null);
    }

    private static ChatMessage Message(JsonNode? m, int i)
    {
        string field = $"messages[{i}]";
        if (m is not JsonObject o) throw OpenAiException.Invalid($"'{field}' must be an object", "messages");
        string role = o["role"] is JsonValue r && r.TryGetValue(out string? rs) && rs is "system" or "user" or "assistant" or "developer" ? rs!
            : throw OpenAiException.Invalid($"'{field}.role' must be system, user or assistant", "messages");
        string content = o["content"] switch
        {
            JsonValue v when v.TryGetValue(out string? s) => s,
            JsonArray parts => string.Concat(parts.Select((p, k) =>
                p is JsonObject po && po["type"] is JsonValue t && t.TryGetValue(out string? ts) && ts == "text" && po["text"] is JsonValue tv && tv.TryGetValue(out string? text) ? text
                : throw OpenAiException.Invalid($"'{field}.content[{k}]' must be a text part ({{\"type\": \"text\", \"text\": …}}); other parts are not supported", "messages"))),
            null when role == "assistant" => "",
            _ => throw OpenAiException.Invalid($"'{field}.content' must be a string or a list of text parts", "messages"),
        };
        return new ChatMessage(role == "developer" ? "system" : role, content);
    }
}
