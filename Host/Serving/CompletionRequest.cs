using System.Text.Json;
using System.Text.Json.Nodes;

namespace ShardPipe.Host.Serving;

/// <summary>One prompt of a request: text (encoded with the model's tokenizer) or token ids as given.</summary>
public sealed record PromptInput(string? Text, long[]? Ids);

/// <summary>
/// An OpenAI <c>/v1/completions</c> request, read and checked field by field before anything runs: a field of the
/// wrong type or out of range is an <see cref="OpenAiException"/> (400) naming it; a parameter this server does not
/// implement with a non-default value is refused the same way rather than ignored.
/// </summary>
public sealed record CompletionRequest(
    string Model,
    IReadOnlyList<PromptInput> Prompts,
    int MaxTokens,
    double Temperature,
    double TopP,
    long? Seed,
    IReadOnlyList<string> Stop,
    bool Stream,
    bool IncludeUsage,
    bool IgnoreEos = false)
{
    /// <summary>OpenAI's default for /v1/completions.</summary>
    public const int DefaultMaxTokens = 16;

    public bool Greedy => Temperature == 0;

    public static CompletionRequest Parse(JsonNode? body, int maxTokensCap)
    {
        if (body is not JsonObject o) throw OpenAiException.Invalid("the request body must be a JSON object", null);
        var prompts = ReadPrompts(o["prompt"]);
        var common = ReadCommon(o, maxTokensCap, DefaultMaxTokens);
        foreach (var (key, neutral) in new[] { ("best_of", "1"), ("echo", "false"), ("logprobs", "null"), ("suffix", "null") })
            if (o[key] is { } v && v.ToJsonString() != neutral && !(key == "logprobs" && v.ToJsonString() == "0"))
                throw OpenAiException.Invalid($"'{key}' is not supported by this server", key);
        return common with { Prompts = prompts };
    }

    /// <summary>The fields completions and chat completions share (model, sampling, stop, stream, n).</summary>
    internal static CompletionRequest ReadCommon(JsonObject o, int maxTokensCap, int? defaultMaxTokens)
    {
        string model = o["model"] is JsonValue mv && mv.TryGetValue(out string? m) && m.Length > 0 ? m
            : throw OpenAiException.Invalid("'model' is required (a string)", "model");
        int maxTokens = Int(o, "max_tokens") ?? Int(o, "max_completion_tokens") ?? defaultMaxTokens ?? maxTokensCap;
        if (maxTokens < 1) throw OpenAiException.Invalid("'max_tokens' must be at least 1", "max_tokens");
        if (maxTokens > maxTokensCap) throw OpenAiException.Invalid($"'max_tokens' is {maxTokens}; this server allows at most {maxTokensCap}", "max_tokens");
        double temperature = Number(o, "temperature") ?? 1.0;
        if (temperature is < 0 or > 2 || double.IsNaN(temperature)) throw OpenAiException.Invalid("'temperature' must be between 0 and 2", "temperature");
        double topP = Number(o, "top_p") ?? 1.0;
        if (topP is <= 0 or > 1 || double.IsNaN(topP)) throw OpenAiException.Invalid("'top_p' must be in (0, 1]", "top_p");
        long? seed = o["seed"] is null ? null : Long(o, "seed");
        if (Int(o, "n") is { } n && n != 1) throw OpenAiException.Invalid("only n = 1 is supported", "n");
        var stop = o["stop"] switch
        {
            null => Array.Empty<string>(),
            JsonValue v when v.TryGetValue(out string? one) => new[] { one },
            JsonArray a when a.Count <= 4 && a.All(x => x is JsonValue xv && xv.TryGetValue(out string? _)) => a.Select(x => x!.GetValue<string>()).ToArray(),
            _ => throw OpenAiException.Invalid("'stop' must be a string or a list of at most 4 strings", "stop"),
        };
        if (stop.Any(s => s.Length == 0)) throw OpenAiException.Invalid("'stop' strings must not be empty", "stop");
        bool stream = Bool(o, "stream") ?? false;
        bool includeUsage = o["stream_options"] is JsonObject so && (Bool(so, "include_usage") ?? false);
        if (o["stream_options"] is { } sov && sov is not JsonObject) throw OpenAiException.Invalid("'stream_options' must be an object", "stream_options");
        // vLLM's extension: generate max_tokens whatever the model samples (benchmarks).
        bool ignoreEos = Bool(o, "ignore_eos") ?? false;
        return new CompletionRequest(model, Array.Empty<PromptInput>(), maxTokens, temperature, topP, seed, stop, stream, includeUsage, ignoreEos);
    }

    private static IReadOnlyList<PromptInput> ReadPrompts(JsonNode? p)
    {
        const string field = "prompt";
        switch (p)
        {
            case null: throw OpenAiException.Invalid("'prompt' is required", field);
            case JsonValue v when v.TryGetValue(out string? text):
                return new[] { new PromptInput(text, null) };
            case JsonArray a when a.Count == 0:
                throw OpenAiException.Invalid("'prompt' must not be empty", field);
            case JsonArray a when a.All(x => x is JsonValue xv && xv.GetValueKind() == JsonValueKind.String):
                return a.Select(x => new PromptInput(x!.GetValue<string>(), null)).ToList();
            case JsonArray a when a.All(x => x is JsonValue xv && xv.GetValueKind() == JsonValueKind.Number):
                return new[] { new PromptInput(null, Ids(a, field)) };
            case JsonArray a when a.All(x => x is JsonArray):
                return a.Select((x, i) => new PromptInput(null, Ids((JsonArray)x!, $"{field}[{i}]"))).ToList();
            default:
                throw OpenAiException.Invalid("'prompt' must be a string, a list of strings, a list of token ids or a list of such lists", field);
        }
    }

    private static long[] Ids(JsonArray a, string field)
    {
        if (a.Count == 0) throw OpenAiException.Invalid($"'{field}' must not be empty", "prompt");
        return a.Select(x => x is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out long id) && id >= 0 ? id
            : throw OpenAiException.Invalid($"'{field}' must hold non-negative integer token ids", "prompt")).ToArray();
    }

    internal static int? Int(JsonObject o, string key) => o[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out int i) => i,
        _ => throw OpenAiException.Invalid($"'{key}' must be an integer", key),
    };

    private static long Long(JsonObject o, string key) =>
        o[key] is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out long l) ? l
            : throw OpenAiException.Invalid($"'{key}' must be an integer", key);

    private static double? Number(JsonObject o, string key) => o[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out double d) => d,
        _ => throw OpenAiException.Invalid($"'{key}' must be a number", key),
    };

    internal static bool? Bool(JsonObject o, string key) => o[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out bool b) => b,
        _ => throw OpenAiException.Invalid($"'{key}' must be true or false", key),
    };
}
