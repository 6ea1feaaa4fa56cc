using System.Text.Json.Nodes;

namespace ShardPipe.Host.Serving;

/// <summary>
/// OpenAI's response shapes, built in one place: the model list, a completion or chat completion (its choices, message
/// with tool_calls, usage), and the streamed chunks (a first delta with the role, content deltas, tool-call deltas, a
/// last chunk with finish_reason, usage).
/// </summary>
public sealed class OpenAiShapes(string id, string model, long created, bool chat)
{
    public static JsonObject Models(string modelId, long created) => new()
    {
        ["object"] = "list",
        ["data"] = new JsonArray(new JsonObject { ["id"] = modelId, ["object"] = "model", ["created"] = created, ["owned_by"] = "shardpipe" }),
    };

    public JsonObject Envelope(JsonArray choices, bool chunk) => new()
    {
        ["id"] = id,
        ["object"] = chat ? chunk ? "chat.completion.chunk" : "chat.completion" : "text_completion",
        ["created"] = created,
        ["model"] = model,
        ["choices"] = choices,
    };

    /// <summary>A whole (not streamed) choice: text for completions; for chat a message with content and, when the model called tools, tool_calls.</summary>
    public JsonObject Choice(int index, string? text, string finish, IReadOnlyList<ToolCall>? calls = null)
    {
        if (!chat) return new() { ["index"] = index, ["text"] = text ?? "", ["logprobs"] = null, ["finish_reason"] = finish };
        var message = new JsonObject { ["role"] = "assistant", ["content"] = text };
        if (calls is { Count: > 0 }) message["tool_calls"] = new JsonArray(calls.Select(c => (JsonNode)c.ToJson()).ToArray());
        return new() { ["index"] = index, ["message"] = message, ["logprobs"] = null, ["finish_reason"] = finish };
    }

    /// <summary>A streamed chunk of one choice: the role (first), a content piece, tool calls, or (with <paramref name="finish"/>) the end.</summary>
    public JsonObject Chunk(int index, string? text, string? finish, bool first = false, IReadOnlyList<ToolCall>? calls = null)
    {
        JsonObject choice;
        if (!chat) choice = new() { ["index"] = index, ["text"] = text ?? "", ["logprobs"] = null, ["finish_reason"] = finish };
        else
        {
            var delta = new JsonObject();
            if (first) { delta["role"] = "assistant"; delta["content"] = ""; }
            else if (text is not null) delta["content"] = text;
            if (calls is { Count: > 0 }) delta["tool_calls"] = new JsonArray(calls.Select((c, i) => (JsonNode)c.ToJson(i)).ToArray());
            choice = new() { ["index"] = index, ["delta"] = delta, ["logprobs"] = null, ["finish_reason"] = finish };
        }
        return Envelope(new JsonArray(choice), chunk: true);
    }

    public static JsonObject Usage(IReadOnlyList<CompletionResult> results)
    {
        var usage = new JsonObject
        {
            ["prompt_tokens"] = results.Sum(r => r.PromptTokens),
            ["completion_tokens"] = results.Sum(r => r.CompletionTokens),
            ["total_tokens"] = results.Sum(r => r.PromptTokens + r.CompletionTokens),
        };
        // Speculative decoding (serve --speculate): draft tokens proposed and accepted by the target.
        if (results.Any(r => r.Speculation is not null))
            usage["speculation"] = new JsonObject
            {
                ["proposed_tokens"] = results.Sum(r => r.Speculation?.Proposed ?? 0),
                ["accepted_tokens"] = results.Sum(r => r.Speculation?.Accepted ?? 0),
            };
        return usage;
    }
}
