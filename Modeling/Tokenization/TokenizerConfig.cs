using ShardPipe.Checkpoints;
using System.Text.Json.Nodes;

namespace ShardPipe.Modeling.Tokenization;

/// <summary>
/// What transformers reads from <c>tokenizer_config.json</c> and <c>special_tokens_map.json</c>: the tokenizer
/// class, the named special tokens, <c>add_bos_token</c> / <c>add_eos_token</c>, <c>legacy</c>,
/// <c>add_prefix_space</c>, <c>clean_up_tokenization_spaces</c> and the added tokens.
/// </summary>
public sealed record TokenizerConfig
{
    public string? TokenizerClass { get; init; }
    public string? BosToken { get; init; }
    public string? EosToken { get; init; }
    public string? UnkToken { get; init; }
    public string? PadToken { get; init; }
    public IReadOnlyList<string> AdditionalSpecialTokens { get; init; } = Array.Empty<string>();
    public bool? AddBosToken { get; init; }
    public bool? AddEosToken { get; init; }
    public bool? Legacy { get; init; }
    /// <summary>As given; null when the config does not say.</summary>
    public bool? AddPrefixSpace { get; init; }
    /// <summary>As given; null when the config does not say (each tokenizer class has its own default).</summary>
    public bool? CleanUpTokenizationSpaces { get; init; }
    public IReadOnlyList<AddedToken> AddedTokens { get; init; } = Array.Empty<AddedToken>();
    /// <summary>The Jinja chat templates by name: a string is "default"; a list of {name, template} keeps its names. Empty when none.</summary>
    public IReadOnlyDictionary<string, string> ChatTemplates { get; init; } = new Dictionary<string, string>();

    /// <summary>The named special tokens (bos, eos, unk, pad and the additional ones) that are set.</summary>
    public IEnumerable<string> NamedSpecialTokens =>
        new[] { BosToken, EosToken, UnkToken, PadToken }.OfType<string>().Concat(AdditionalSpecialTokens).Distinct();

    /// <summary>Whether transformers would run this as a Llama tokenizer (whose fast form rebuilds its post-processor from add_bos/add_eos).</summary>
    public bool IsLlama => TokenizerClass is "LlamaTokenizer" or "LlamaTokenizerFast" or "CodeLlamaTokenizer" or "CodeLlamaTokenizerFast";

    public static TokenizerConfig Read(string folder)
    {
        string configPath = Path.Combine(folder, "tokenizer_config.json"), mapPath = Path.Combine(folder, "special_tokens_map.json");
        var config = ReadObject(configPath);
        var map = ReadObject(mapPath);
        string? Token(string key) => TokenText(config?[key], configPath, key) ?? TokenText(map?[key], mapPath, key);
        bool? Flag(string key) => config?[key] is JsonValue v && v.TryGetValue(out bool b) ? b : null;
        var added = new List<AddedToken>();
        if (config?["added_tokens_decoder"] is JsonObject decoder)
            foreach (var (key, value) in decoder)
            {
                if (!int.TryParse(key, out int id) || id < 0 || value is not JsonObject o || o["content"] is not JsonValue c || !c.TryGetValue(out string? content))
                    throw new CheckpointFormatException(configPath, null, $"added_tokens_decoder['{key}'] must map an id to {{\"content\": …}}");
                bool F(string k) => o[k] is JsonValue x && x.TryGetValue(out bool b) && b;
                added.Add(new AddedToken(id, content, F("special"), F("lstrip"), F("rstrip"), F("single_word"), F("normalized")));
            }
        var additional = (config?["additional_special_tokens"] ?? map?["additional_special_tokens"]) is JsonArray extra
            ? extra.Select((t, i) => TokenText(t, configPath, $"additional_special_tokens[{i}]")).OfType<string>().ToList()
            : new List<string>();
        return new TokenizerConfig
        {
            TokenizerClass = config?["tokenizer_class"] is JsonValue tc && tc.TryGetValue(out string? cls) ? cls : null,
            BosToken = Token("bos_token"),
            EosToken = Token("eos_token"),
            UnkToken = Token("unk_token"),
            PadToken = Token("pad_token"),
            AdditionalSpecialTokens = additional,
            AddBosToken = Flag("add_bos_token"),
            AddEosToken = Flag("add_eos_token"),
            Legacy = Flag("legacy"),
            AddPrefixSpace = Flag("add_prefix_space"),
            CleanUpTokenizationSpaces = Flag("clean_up_tokenization_spaces"),
            AddedTokens = added,
            ChatTemplates = NamedChatTemplates(config?["chat_template"], configPath),
        };
    }

    /// <summary><c>chat_template</c> as transformers reads it: a string (named "default") or a list of <c>{"name", "template"}</c>.</summary>
    public static Dictionary<string, string> NamedChatTemplates(JsonNode? node, string path)
    {
        var named = new Dictionary<string, string>(StringComparer.Ordinal);
        switch (node)
        {
            case null: break;
            case JsonValue v when v.TryGetValue(out string? t): named["default"] = t; break;
            case JsonArray list:
                for (int i = 0; i < list.Count; i++)
                {
                    if (list[i] is not JsonObject o || o["name"] is not JsonValue n || !n.TryGetValue(out string? name) || o["template"] is not JsonValue tv || !tv.TryGetValue(out string? template))
                        throw new CheckpointFormatException(path, null, $"chat_template[{i}] must be {{\"name\": …, \"template\": …}}");
                    named[name] = template;
                }
                break;
            default: throw new CheckpointFormatException(path, null, "chat_template must be a string or a list of {name, template}");
        }
        return named;
    }

    private static JsonNode? ReadObject(string path)
    {
        if (!File.Exists(path)) return null;
        return StrictJson.Parse(path, File.ReadAllText(path)) as JsonObject ?? throw new CheckpointFormatException(path, null, "not a JSON object");
    }

    /// <summary>A special token given as a string or as <c>{"content": …}</c>; null when absent or null.</summary>
    private static string? TokenText(JsonNode? n, string path, string key) => n switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out string? s) => s,
        JsonObject o when o["content"] is JsonValue c && c.TryGetValue(out string? s) => s,
        _ => throw new CheckpointFormatException(path, null, $"{key} must be a string or {{\"content\": …}}"),
    };

    /// <summary>transformers' <c>clean_up_tokenization</c>: no space before punctuation and English contractions.</summary>
    public static string CleanUp(string text) => text.Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",")
        .Replace(" ' ", "'").Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");
}
