using System.Text.Json.Nodes;

namespace ShardPipe.Host.Serving;

/// <summary>
/// An error answered in OpenAI's shape — <c>{"error": {"message", "type", "param", "code"}}</c> — with its HTTP
/// status: 400 bad input (naming the field), 404 unknown model, 429 the admission queue is full, 503 no model ready.
/// </summary>
public sealed class OpenAiException(int status, string message, string type, string? param = null, string? code = null, int? retryAfterSeconds = null)
    : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;
    public int? RetryAfterSeconds { get; } = retryAfterSeconds;

    public static OpenAiException Invalid(string message, string? param) => new(400, message, "invalid_request_error", param);

    public static OpenAiException UnknownModel(string model, string served) =>
        new(404, $"The model '{model}' does not exist; this server serves '{served}'", "invalid_request_error", "model", "model_not_found");

    public static OpenAiException Unauthorized() =>
        new(401, "missing or wrong API key: send Authorization: Bearer <key>", "invalid_request_error", code: "invalid_api_key");

    public static OpenAiException Busy(int active, int queued) =>
        new(429, $"the server is busy: {active} requests running and {queued} waiting; retry later", "rate_limit_error", code: "rate_limit_exceeded", retryAfterSeconds: 1);

    public static OpenAiException Unavailable(string why) => new(503, why, "service_unavailable", retryAfterSeconds: 2);

    public JsonObject Body() => new()
    {
        ["error"] = new JsonObject
        {
            ["message"] = Message,
            ["type"] = Type,
            ["param"] = Param,
            ["code"] = Code,
        },
    };
}
