using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Modeling.Chat;

/// <summary>
/// What <c>apply_chat_template</c> is given: the messages (dicts as the caller wrote them: role, content as a string or
/// a list of parts, tool_calls, …), <c>tools</c> and <c>documents</c> (null when not given: defined, but none),
/// <c>add_generation_prompt</c>, <c>continue_final_message</c> and extra keyword arguments (<c>chat_template_kwargs</c>,
/// e.g. Qwen3's <c>enable_thinking</c>).
/// </summary>
public sealed record ChatInput
{
    public required List<object?> Messages { get; init; }
    public List<object?>? Tools { get; init; }
    public List<object?>? Documents { get; init; }
    public bool AddGenerationPrompt { get; init; }
    public bool ContinueFinalMessage { get; init; }
    public IReadOnlyDictionary<string, object?> Kwargs { get; init; } = new Dictionary<string, object?>();

    /// <summary>
    /// Reads <c>{"messages": [...], "tools": [...], "documents": [...], "add_generation_prompt": b,
    /// "continue_final_message": b, "chat_template_kwargs": {...}}</c>; <paramref name="source"/> names it in errors.
    /// </summary>
    public static ChatInput FromJson(JsonNode? node, string source, bool defaultGenerationPrompt = true)
    {
        if (node is not JsonObject o) throw new InvalidInputException($"{source}: must be a JSON object with \"messages\"");
        if (o["messages"] is not JsonArray messages || messages.Count == 0) throw new InvalidInputException($"{source}: 'messages' must be a non-empty list");
        for (int i = 0; i < messages.Count; i++)
            if (messages[i] is not JsonObject m || m["role"] is not JsonValue r || r.GetValueKind() != System.Text.Json.JsonValueKind.String)
                throw new InvalidInputException($"{source}: 'messages[{i}]' must be an object with a string 'role'");
        List<object?>? List(string key) => o[key] switch
        {
            null => null,
            JsonArray a => (List<object?>)Py.FromJson(a)!,
            _ => throw new InvalidInputException($"{source}: '{key}' must be a list"),
        };
        bool Flag(string key, bool fallback) => o[key] switch
        {
            null => fallback,
            JsonValue v when v.TryGetValue(out bool b) => b,
            _ => throw new InvalidInputException($"{source}: '{key}' must be true or false"),
        };
        var kwargs = o["chat_template_kwargs"] switch
        {
            null => new Dictionary<string, object?>(),
            JsonObject k => (Dictionary<string, object?>)Py.FromJson(k)!,
            _ => throw new InvalidInputException($"{source}: 'chat_template_kwargs' must be an object"),
        };
        bool cont = Flag("continue_final_message", false);
        return new ChatInput
        {
            Messages = (List<object?>)Py.FromJson(messages)!,
            Tools = List("tools"),
            Documents = List("documents"),
            ContinueFinalMessage = cont,
            AddGenerationPrompt = Flag("add_generation_prompt", defaultGenerationPrompt && !cont),
            Kwargs = kwargs,
        };
    }
}

/// <summary>
/// A model's chat templates, found as transformers finds them: <c>chat_template.jinja</c> beside the tokenizer, else
/// <c>chat_template.json</c>, else <c>tokenizer_config.json</c>'s <c>chat_template</c> (a string, or a list of named
/// templates); plus <c>additional_chat_templates/NAME.jinja</c>. <see cref="Apply"/> is <c>apply_chat_template</c>'s
/// rendering: the named special tokens, messages, tools, documents, add_generation_prompt and the extra keyword
/// arguments, then continue_final_message's cut. The caller encodes the text WITHOUT adding special tokens (the
/// template writes its own BOS).
/// </summary>
public sealed class ChatTemplates
{
    private readonly Dictionary<string, ChatTemplate> _named;

    /// <summary>Where the templates came from (a file path).</summary>
    public string From { get; }
    public IReadOnlyCollection<string> Names => _named.Keys;

    private ChatTemplates(Dictionary<string, ChatTemplate> named, string from)
    {
        _named = named;
        From = from;
    }

    /// <summary>A single template (tests, or a caller with its own).</summary>
    public static ChatTemplates Of(string source, string name = "default") => new(new() { ["default"] = ChatTemplate.Parse(source, name) }, name);

    /// <summary>The folder's templates; null when it has none.</summary>
    public static ChatTemplates? Find(string folder)
    {
        var named = new Dictionary<string, string>(StringComparer.Ordinal);
        string from;
        string jinja = Path.Combine(folder, "chat_template.jinja"), json = Path.Combine(folder, "chat_template.json"), config = Path.Combine(folder, "tokenizer_config.json");
        if (File.Exists(jinja)) { named["default"] = File.ReadAllText(jinja); from = jinja; }
        else if (File.Exists(json))
        {
            var node = StrictJson.Parse(json, File.ReadAllText(json)) as JsonObject ?? throw new CheckpointFormatException(json, null, "not a JSON object");
            foreach (var (k, v) in TokenizerConfig.NamedChatTemplates(node["chat_template"], json)) named[k] = v;
            from = json;
        }
        else
        {
            foreach (var (k, v) in TokenizerConfig.Read(folder).ChatTemplates) named[k] = v;
            from = config;
        }
        string extra = Path.Combine(folder, "additional_chat_templates");
        if (Directory.Exists(extra))
            foreach (var file in Directory.GetFiles(extra, "*.jinja").Order(StringComparer.Ordinal))
                named.TryAdd(Path.GetFileNameWithoutExtension(file), File.ReadAllText(file));
        if (named.Count == 0) return null;
        var parsed = named.ToDictionary(kv => kv.Key, kv => ChatTemplate.Parse(kv.Value, named.Count == 1 ? Path.GetFileName(from) : $"{Path.GetFileName(from)}:{kv.Key}"));
        return new ChatTemplates(parsed, from);
    }

    /// <summary>transformers' get_chat_template: a name asked for; else tool_use when tools are given and it exists; else default.</summary>
    public ChatTemplate Select(bool withTools, string? name = null)
    {
        if (name is not null)
            return _named.TryGetValue(name, out var t) ? t : throw new InvalidInputException($"no chat template named '{name}' (the model has: {string.Join(", ", _named.Keys.Order())})");
        if (withTools && _named.TryGetValue("tool_use", out var tools)) return tools;
        if (_named.TryGetValue("default", out var d)) return d;
        if (_named.Count == 1) return _named.Values.First();
        throw new InvalidInputException($"the model has several chat templates and none named 'default' ({string.Join(", ", _named.Keys.Order())}); name one");
    }

    /// <summary>The special tokens templates see by name (bos_token, eos_token, unk_token, pad_token, additional_special_tokens) — those set.</summary>
    public static Dictionary<string, object?> SpecialTokens(TokenizerConfig c)
    {
        var map = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (name, value) in new[] { ("bos_token", c.BosToken), ("eos_token", c.EosToken), ("unk_token", c.UnkToken), ("pad_token", c.PadToken) })
            if (value is not null) map[name] = value;
        if (c.AdditionalSpecialTokens.Count > 0) map["additional_special_tokens"] = c.AdditionalSpecialTokens.Cast<object?>().ToList();
        return map;
    }

    public string Apply(ChatInput input, IReadOnlyDictionary<string, object?> specialTokens, string? templateName = null, DateTime? now = null, RenderLimits? limits = null) =>
        Apply(Select(input.Tools is not null, templateName), input, specialTokens, now, limits);

    public static string Apply(ChatTemplate template, ChatInput input, IReadOnlyDictionary<string, object?> specialTokens, DateTime? now = null, RenderLimits? limits = null)
    {
        if (input.ContinueFinalMessage && input.AddGenerationPrompt)
            throw new InvalidInputException("continue_final_message and add_generation_prompt are not compatible: continue_final_message continues the last message, add_generation_prompt starts a new one");
        var variables = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (k, v) in specialTokens) variables[k] = v;
        foreach (var (k, v) in input.Kwargs) variables[k] = v;
        variables["messages"] = input.Messages;
        variables["tools"] = input.Tools;
        variables["documents"] = input.Documents;
        variables["add_generation_prompt"] = input.AddGenerationPrompt;
        string rendered = template.Render(variables, now, limits);
        return input.ContinueFinalMessage ? CutAfterFinalMessage(template, rendered, input.Messages) : rendered;
    }

    /// <summary>continue_final_message: the text ends where the final message's content does (the template's end-of-turn goes).</summary>
    private static string CutAfterFinalMessage(ChatTemplate template, string rendered, List<object?> messages)
    {
        object? content = messages[^1] is Dictionary<string, object?> last ? last.GetValueOrDefault("content") : null;
        if (content is List<object?> parts)
            content = parts.AsEnumerable().Reverse().OfType<Dictionary<string, object?>>().FirstOrDefault(p => p.ContainsKey("text"))?["text"]
                ?? throw new InvalidInputException("continue_final_message is set but the final message has no text to continue");
        if (content is not string final) throw new InvalidInputException("continue_final_message is set but the final message's content is not text");
        string stripped = Py.Strip(final, null);
        int at = rendered.LastIndexOf(stripped, StringComparison.Ordinal);
        if (at < 0) throw new ChatTemplateException(template.Name, 0, "continue_final_message is set but the final message does not appear in the rendered chat");
        string lstripped = Py.Strip(final, null, right: false);
        int end = at + lstripped.Length <= rendered.Length && rendered.Substring(at, lstripped.Length) == final ? at + lstripped.Length : at + stripped.Length;
        return rendered[..end];
    }
}
