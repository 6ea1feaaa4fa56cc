using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using ShardPipe.Checkpoints;

namespace ShardPipe.Modeling.Tokenization;

/// <summary>
/// A model folder's tokenizer, through Microsoft.ML.Tokenizers: GPT-2 style byte-level BPE from
/// <c>vocab.json</c> + <c>merges.txt</c> or from a BPE <c>tokenizer.json</c>, and SentencePiece <c>tokenizer.model</c>.
/// The library has no GPT-2 pre-tokenizer, so ours supplies GPT-2's split pattern; special tokens are matched
/// before splitting; <c>add_prefix_space</c> comes from tokenizer_config.json.
/// </summary>
public sealed class ModelTokenizer
{
    /// <summary>GPT-2's pre-tokenization pattern (contractions, letters, digits, other, whitespace).</summary>
    private static readonly Regex Gpt2Split = new(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.Compiled);

    private readonly Tokenizer _tokenizer;
    public bool AddPrefixSpace { get; }
    public IReadOnlyDictionary<string, int> SpecialTokens { get; }

    private ModelTokenizer(Tokenizer tokenizer, bool addPrefixSpace, IReadOnlyDictionary<string, int> special)
    {
        _tokenizer = tokenizer;
        AddPrefixSpace = addPrefixSpace;
        SpecialTokens = special;
    }

    public static bool Exists(string folder) =>
        File.Exists(Path.Combine(folder, "vocab.json")) || File.Exists(Path.Combine(folder, "tokenizer.json")) || File.Exists(Path.Combine(folder, "tokenizer.model"));

    public static ModelTokenizer Load(string folder)
    {
        var config = ReadJson(Path.Combine(folder, "tokenizer_config.json"));
        bool prefix = config?["add_prefix_space"] is JsonValue v && v.GetValue<bool>();
        string vocab = Path.Combine(folder, "vocab.json"), merges = Path.Combine(folder, "merges.txt");
        string json = Path.Combine(folder, "tokenizer.json"), sp = Path.Combine(folder, "tokenizer.model");
        try
        {
            if (File.Exists(vocab) && File.Exists(merges))
            {
                var special = SpecialFromVocab(vocab, folder);
                var options = new BpeOptions(vocab, merges) { ByteLevel = true, PreTokenizer = new RegexPreTokenizer(Gpt2Split, special), SpecialTokens = special };
                return new ModelTokenizer(BpeTokenizer.Create(options), prefix, special);
            }
            if (File.Exists(json)) return FromTokenizerJson(json, prefix);
            if (File.Exists(sp))
            {
                using var stream = File.OpenRead(sp);
                var llama = LlamaTokenizer.Create(stream);
                return new ModelTokenizer(llama, prefix, llama.SpecialTokens ?? new Dictionary<string, int>());
            }
        }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or FormatException or System.Text.Json.JsonException)
        {
            throw new CheckpointFormatException(folder, null, $"tokenizer files cannot be read ({ex.Message})", ex);
        }
        throw new CheckpointNotFoundException($"no tokenizer in {folder}", new[] { vocab, json, sp });
    }

    /// <summary>A BPE tokenizer.json (model.type "BPE"): vocab, merges, added tokens, byte-level when its pre-tokenizer is.</summary>
    private static ModelTokenizer FromTokenizerJson(string path, bool prefix)
    {
        var root = JsonNode.Parse(File.ReadAllText(path))!;
        var model = root["model"] ?? throw new CheckpointFormatException(path, null, "no 'model' section");
        if (model["type"]?.GetValue<string>() is { } type && type != "BPE")
            throw new UnsupportedException($"{path}: tokenizer model type '{type}' is not supported (BPE only)");
        var vocab = ((JsonObject)model["vocab"]!).Select(kv => new KeyValuePair<string, int>(kv.Key, kv.Value!.GetValue<int>())).ToList();
        var merges = ((JsonArray)model["merges"]!).Select(m => m is JsonArray pair ? $"{pair[0]} {pair[1]}" : m!.GetValue<string>()).ToList();
        var special = (root["added_tokens"] as JsonArray ?? new JsonArray())
            .Where(t => t!["special"]?.GetValue<bool>() ?? true)
            .ToDictionary(t => t!["content"]!.GetValue<string>(), t => t!["id"]!.GetValue<int>());
        bool byteLevel = root["pre_tokenizer"]?.ToJsonString().Contains("ByteLevel", StringComparison.Ordinal) ?? false;
        var options = new BpeOptions(vocab)
        {
            Merges = merges, ByteLevel = byteLevel, SpecialTokens = special,
            PreTokenizer = byteLevel ? new RegexPreTokenizer(Gpt2Split, special) : PreTokenizer.CreateWordOrNonWord(special),
            UnknownToken = model["unk_token"]?.GetValue<string>(),
        };
        return new ModelTokenizer(BpeTokenizer.Create(options), prefix, special);
    }

    /// <summary>Special tokens of a vocab.json model: added_tokens.json if present, else the familiar GPT-2 markers found in the vocabulary.</summary>
    private static Dictionary<string, int> SpecialFromVocab(string vocabPath, string folder)
    {
        var special = new Dictionary<string, int>(StringComparer.Ordinal);
        if (ReadJson(Path.Combine(folder, "added_tokens.json")) is JsonObject added)
            foreach (var (k, v) in added) special[k] = v!.GetValue<int>();
        var vocab = (JsonObject)JsonNode.Parse(File.ReadAllText(vocabPath))!;
        foreach (var (k, v) in vocab)
            if (k.StartsWith("<|", StringComparison.Ordinal) && k.EndsWith("|>", StringComparison.Ordinal)) special.TryAdd(k, v!.GetValue<int>());
        return special;
    }

    private static JsonNode? ReadJson(string path) => File.Exists(path) ? JsonNode.Parse(File.ReadAllText(path)) : null;

    public (int[] Ids, string[] Tokens) Encode(string text)
    {
        var tokens = _tokenizer.EncodeToTokens(AddPrefixSpace && text.Length > 0 && text[0] != ' ' ? " " + text : text, out _);
        return (tokens.Select(t => t.Id).ToArray(), tokens.Select(t => t.Value).ToArray());
    }

    public string Decode(IEnumerable<long> ids) => _tokenizer.Decode(ids.Select(i => checked((int)i))) ?? "";
}
