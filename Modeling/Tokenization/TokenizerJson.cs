using System.Text.Json;
using ShardPipe.Checkpoints;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace ShardPipe.Modeling.Tokenization;

/// <summary>A split of the input on its way to the model; <c>AtStart</c> when it begins the input.</summary>
public readonly record struct Split(string Text, bool AtStart);

public interface INormalizer { string Normalize(string text); }

public interface IPreTokenizer { List<Split> PreTokenize(List<Split> splits); }

public interface IPostProcessor { List<(string Token, int Id)> Process(List<(string Token, int Id)> tokens, bool addSpecialTokens); }

public interface IDecoder { List<string> DecodeChain(List<string> tokens); }

/// <summary>
/// A <c>tokenizer.json</c> (Hugging Face <c>tokenizers</c>) as a pipeline: added tokens → normalizer → pre-tokenizer
/// → BPE model → post-processor, and decoder back. The components the GPT-2, Llama 2/3, Mistral and Qwen2 files use
/// are implemented; any other is refused with an <see cref="UnsupportedException"/> naming it.
/// </summary>
public sealed class TokenizerJson
{
    public BpeModel Model { get; }
    public IReadOnlyList<AddedToken> AddedTokens { get; }
    public INormalizer? Normalizer { get; }
    public IPreTokenizer? PreTokenizer { get; }
    public IPostProcessor? PostProcessor { get; set; }
    public IDecoder? Decoder { get; }
    private readonly AddedTokenSplitter _raw, _normalized;
    private readonly Dictionary<int, string> _addedById = new(); // the first added token of each id, as a scan finds it
    private readonly HashSet<int> _specialIds;
    private string _path = "tokenizer.json";

    private TokenizerJson(BpeModel model, IReadOnlyList<AddedToken> added, INormalizer? normalizer, IPreTokenizer? pre, IPostProcessor? post, IDecoder? decoder)
    {
        Model = model;
        AddedTokens = added;
        Normalizer = normalizer;
        PreTokenizer = pre;
        PostProcessor = post;
        Decoder = decoder;
        _raw = new AddedTokenSplitter(added.Where(t => !t.Normalized));
        _normalized = new AddedTokenSplitter(added.Where(t => t.Normalized));
        foreach (var t in added) _addedById.TryAdd(t.Id, t.Content);
        _specialIds = added.Where(t => t.Special).Select(t => t.Id).ToHashSet();
    }

    /// <param name="byteLevelAddPrefixSpace">When set, overrides every ByteLevel pre-tokenizer's add_prefix_space (as GPT2TokenizerFast does).</param>
    /// <remarks>
    /// Fast on big files (Gemma 3's is 33 MB, 262k tokens): one JsonDocument pass; the vocabulary and merges are read
    /// from it directly (a duplicate token is a format error), every other section through StrictJson as before.
    /// </remarks>
    public static TokenizerJson Load(string path, bool? byteLevelAddPrefixSpace = null)
    {
        var p = new JsonParts(path) { ByteLevelAddPrefixSpace = byteLevelAddPrefixSpace };
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { MaxDepth = 64 }); }
        catch (JsonException e) { throw new CheckpointFormatException(path, null, $"not valid JSON: {e.Message}"); }
        using (doc)
        {
            try { return FromDocument(doc, path, p); }
            catch (InvalidOperationException e) { throw new CheckpointFormatException(path, null, $"not valid JSON text: {e.Message}"); } // e.g. a string that is not UTF-8
        }
    }

    private static TokenizerJson FromDocument(JsonDocument doc, string path, JsonParts p)
    {
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new CheckpointFormatException(path, null, "not a JSON object");
            var root = Sections(doc.RootElement, path, "", "model");
            if (!doc.RootElement.TryGetProperty("model", out var modelElement) || modelElement.ValueKind != JsonValueKind.Object)
                throw new CheckpointFormatException(path, null, "no 'model' object");
            var model = Sections(modelElement, path, "model.", "vocab", "merges");
            var added = (root["added_tokens"] as JsonArray ?? new JsonArray()).Select(t => new AddedToken(
                p.Int(t, "id"), p.Str(t, "content"), p.Bool(t, "special", false), p.Bool(t, "lstrip", false), p.Bool(t, "rstrip", false),
                p.Bool(t, "single_word", false), p.Bool(t, "normalized", false))).ToList();
            return new TokenizerJson(BuildModel(model, modelElement, p), added, Normalizers.Build(root["normalizer"], p), PreTokenizers.Build(root["pre_tokenizer"], p),
                PostProcessors.Build(root["post_processor"], p, added), Decoders.Build(root["decoder"], p)) { _path = path };
        }
    }

    /// <summary>An object's members except the big ones, each read with StrictJson (no duplicate keys anywhere).</summary>
    private static JsonObject Sections(JsonElement o, string path, string prefix, params string[] skip)
    {
        var result = new JsonObject();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var member in o.EnumerateObject())
        {
            if (!seen.Add(member.Name)) throw new CheckpointFormatException(path, null, $"duplicate key '{prefix}{member.Name}'");
            if (skip.Contains(member.Name)) continue;
            result[member.Name] = StrictJson.Parse(path, member.Value.GetRawText());
        }
        return result;
    }

    private static BpeModel BuildModel(JsonObject model, JsonElement element, JsonParts p)
    {
        string type = p.OptStr(model, "type") ?? "BPE";
        if (type != "BPE") throw new UnsupportedException($"{p.Path}: model type '{type}' is not supported (BPE is)");
        if (model["dropout"] is JsonValue d && d.GetValueKind() == JsonValueKind.Number && d.GetValue<double>() > 0)
            throw new UnsupportedException($"{p.Path}: BPE dropout is not supported (it makes encoding random)");
        if (!element.TryGetProperty("vocab", out var vocabElement) || vocabElement.ValueKind != JsonValueKind.Object)
            throw new CheckpointFormatException(p.Path, null, "model.vocab must be an object");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in vocabElement.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out int id) || id < 0)
                throw new CheckpointFormatException(p.Path, null, $"model.vocab['{entry.Name}'] must be an integer");
            if (!vocab.TryAdd(entry.Name, id)) throw new CheckpointFormatException(p.Path, null, $"duplicate key 'model.vocab['{entry.Name}']'");
        }
        var merges = new List<(string, string)>();
        if (element.TryGetProperty("merges", out var mergesElement))
        {
            if (mergesElement.ValueKind != JsonValueKind.Array) throw new CheckpointFormatException(p.Path, null, "model.merges must be a list");
            int i = 0;
            foreach (var m in mergesElement.EnumerateArray())
            {
                if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                    merges.Add((m[0].GetString()!, m[1].GetString()!));
                else if (m.ValueKind == JsonValueKind.String)
                {
                    string s = m.GetString()!;
                    int space = s.IndexOf(' ', 1);
                    merges.Add(space > 0 ? (s[..space], s[(space + 1)..]) : throw new CheckpointFormatException(p.Path, null, $"model.merges[{i}] '{s}' is not two tokens"));
                }
                else throw new CheckpointFormatException(p.Path, null, $"model.merges[{i}] must be a string");
                i++;
            }
        }
        return new BpeModel(vocab, merges, p.OptStr(model, "unk_token"), p.Bool(model, "byte_fallback", false), p.Bool(model, "fuse_unk", false),
            p.Bool(model, "ignore_merges", false), p.OptStr(model, "continuing_subword_prefix"), p.OptStr(model, "end_of_word_suffix"), p.Path);
    }

    /// <summary>Ids and tokens of <paramref name="text"/>, as <c>tokenizer.encode(text, add_special_tokens)</c>.</summary>
    public List<(string Token, int Id)> Encode(string text, bool addSpecialTokens)
    {
        try { return EncodeCore(text, addSpecialTokens); }
        catch (RegexMatchTimeoutException ex)
        {
            throw new UnsupportedException($"{_path}: a pattern of this tokenizer.json took over {JsonParts.RegexTimeout.TotalSeconds:0} s on one match ('{ex.Pattern}'): refused");
        }
    }

    private List<(string Token, int Id)> EncodeCore(string text, bool addSpecialTokens)
    {
        var tokens = new List<(string, int)>();
        foreach (var raw in _raw.Split(text))
        {
            if (raw.Token is { } t) { tokens.Add((t.Content, t.Id)); continue; }
            string normalized = Normalizer?.Normalize(raw.Text) ?? raw.Text;
            foreach (var seg in _normalized.Split(normalized, raw.AtStart))
            {
                if (seg.Token is { } nt) { tokens.Add((nt.Content, nt.Id)); continue; }
                var splits = new List<Split> { new(seg.Text, seg.AtStart) };
                if (PreTokenizer is not null) splits = PreTokenizer.PreTokenize(splits);
                foreach (var s in splits) tokens.AddRange(Model.Tokenize(s.Text));
            }
        }
        return PostProcessor?.Process(tokens, addSpecialTokens) ?? tokens;
    }

    public string? IdToToken(int id) => _addedById.TryGetValue(id, out var content) ? content : Model.IdToToken(id);

    /// <summary><c>tokenizer.decode(ids, skip_special_tokens)</c>: ids to tokens, special ones dropped if asked, then the decoder chain.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens)
    {
        var tokens = ids.Where(id => !(skipSpecialTokens && _specialIds.Contains(id))).Select(IdToToken).OfType<string>().ToList();
        return Decoder is null ? string.Join(" ", tokens) : string.Concat(Decoder.DecodeChain(tokens));
    }
}

/// <summary>Typed reads of tokenizer.json fields; a wrong type is a format error naming the file and field.</summary>
internal sealed class JsonParts(string path)
{
    public string Path { get; } = path;
    public bool? ByteLevelAddPrefixSpace { get; init; }

    public int IntValue(JsonNode? n, string field) =>
        n is JsonValue v && v.TryGetValue(out int i) ? i : n is JsonValue v2 && v2.TryGetValue(out long l) && l is >= 0 and <= int.MaxValue ? (int)l
        : throw new CheckpointFormatException(Path, null, $"{field} must be an integer");
    public string StrValue(JsonNode? n, string field) => n is JsonValue v && v.TryGetValue(out string? s) ? s : throw new CheckpointFormatException(Path, null, $"{field} must be a string");
    /// <summary>A field of an object; null when absent, or when <paramref name="o"/> is not an object at all.</summary>
    public static JsonNode? Field(JsonNode? o, string key) => (o as JsonObject)?[key];
    public int Int(JsonNode? o, string key) => IntValue(Field(o, key), key);
    public string Str(JsonNode? o, string key) => StrValue(Field(o, key), key);
    /// <summary>An optional string field: null when absent or null, else it must be a string.</summary>
    public string? OptStr(JsonNode? o, string key) => Field(o, key) is { } n ? StrValue(n, key) : null;
    public bool Bool(JsonNode? o, string key, bool fallback) => Field(o, key) is JsonValue v && v.TryGetValue(out bool b) ? b : fallback;
    public string Type(JsonNode n, string section) => Field(n, "type") is JsonValue v && v.TryGetValue(out string? t) ? t : throw new CheckpointFormatException(Path, null, $"{section} has no 'type'");
    public CheckpointFormatException NullEntry(string section) => new(Path, null, $"{section} holds a null entry");
    public static readonly TimeSpan RegexTimeout = TimeSpan.FromSeconds(2);

    public UnsupportedException Unsupported(string section, string type, string supported) =>
        new($"{Path}: {section} type '{type}' is not supported (supported: {supported})");

    /// <summary>A <c>{"String": s}</c> or <c>{"Regex": r}</c> pattern as a regex.</summary>
    public Regex Pattern(JsonNode? n, string section)
    {
        if (Field(n, "String") is JsonValue s) return new Regex(Regex.Escape(StrValue(s, $"{section} pattern.String")), RegexOptions.CultureInvariant);
        if (Field(n, "Regex") is JsonValue r)
        {
            // A regex from the file is the one place a hostile tokenizer.json could make encoding run away (catastrophic
            // backtracking): each match is bounded, and a timeout becomes a typed error naming the file (see Encode).
            try { return new Regex(StrValue(r, $"{section} pattern.Regex"), RegexOptions.CultureInvariant, RegexTimeout); }
            catch (ArgumentException ex) { throw new UnsupportedException($"{Path}: {section} regex cannot be compiled here ({ex.Message})"); }
        }
        throw new CheckpointFormatException(Path, null, $"{section} pattern must be {{\"String\": …}} or {{\"Regex\": …}}");
    }
}

/// <summary>The normalizers of tokenizer.json that the supported models use.</summary>
internal static class Normalizers
{
    private sealed record Fn(Func<string, string> F) : INormalizer { public string Normalize(string t) => F(t); }

    public static INormalizer? Build(JsonNode? n, JsonParts p)
    {
        if (n is null) return null;
        string type = p.Type(n, "normalizer");
        return type switch
        {
            "Sequence" => Chain(((n["normalizers"] as JsonArray) ?? new JsonArray()).Select(x => Build(x, p) ?? throw p.NullEntry("normalizer Sequence")).ToList()),
            "NFC" => new Fn(t => UnicodeNormalization.Normalize(t, UnicodeNormalization.Form.NFC)),
            "NFD" => new Fn(t => UnicodeNormalization.Normalize(t, UnicodeNormalization.Form.NFD)),
            "NFKC" => new Fn(t => UnicodeNormalization.Normalize(t, UnicodeNormalization.Form.NFKC)),
            "NFKD" => new Fn(t => UnicodeNormalization.Normalize(t, UnicodeNormalization.Form.NFKD)),
            "Lowercase" => new Fn(t => t.ToLowerInvariant()),
            "Prepend" => Prepend(p.Str(n, "prepend")),
            "Replace" => Replace(p.Pattern(n["pattern"], "normalizer Replace"), p.Str(n, "content")),
            "Strip" => Strip(p.Bool(n, "strip_left", true), p.Bool(n, "strip_right", true)),
            _ => throw p.Unsupported("normalizer", type, "Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip"),
        };
    }

    private static INormalizer Chain(List<INormalizer> all) => new Fn(t => all.Aggregate(t, (s, n) => n.Normalize(s)));
    private static INormalizer Prepend(string prefix) => new Fn(t => t.Length == 0 ? t : prefix + t);
    private static INormalizer Replace(Regex pattern, string content) => new Fn(t => pattern.Replace(t, content.Replace("$", "$$")));
    private static INormalizer Strip(bool left, bool right) => new Fn(t => left && right ? t.Trim() : left ? t.TrimStart() : right ? t.TrimEnd() : t);
}

/// <summary>The pre-tokenizers of tokenizer.json that the supported models use.</summary>
internal static class PreTokenizers
{
    private sealed record Fn(Func<List<Split>, List<Split>> F) : IPreTokenizer { public List<Split> PreTokenize(List<Split> s) => F(s); }

    public static IPreTokenizer? Build(JsonNode? n, JsonParts p)
    {
        if (n is null) return null;
        string type = p.Type(n, "pre_tokenizer");
        switch (type)
        {
            case "Sequence":
                var all = ((n["pretokenizers"] as JsonArray) ?? new JsonArray()).Select(x => Build(x, p) ?? throw p.NullEntry("pre_tokenizer Sequence")).ToList();
                return new Fn(s => all.Aggregate(s, (acc, pt) => pt.PreTokenize(acc)));
            case "ByteLevel":
                return ByteLevelPre(p.ByteLevelAddPrefixSpace ?? p.Bool(n, "add_prefix_space", true), p.Bool(n, "use_regex", true));
            case "Split":
                return SplitBy(p.Pattern(n["pattern"], "pre_tokenizer Split"), Behavior(p.Str(n, "behavior"), p), p.Bool(n, "invert", false));
            case "Metaspace":
                string replacement = p.OptStr(n, "replacement") ?? "\u2581";
                string scheme = p.OptStr(n, "prepend_scheme") ?? (p.Bool(n, "add_prefix_space", true) ? "always" : "never");
                return Metaspace(replacement, scheme, p.Bool(n, "split", true), p);
            case "Whitespace":
                return SplitBy(new Regex(@"\w+|[^\w\s]+", RegexOptions.CultureInvariant), "Removed", invert: true);
            case "WhitespaceSplit":
                return SplitBy(new Regex(@"\s+", RegexOptions.CultureInvariant), "Removed", invert: false);
            case "Digits":
                return SplitBy(new Regex(p.Bool(n, "individual_digits", false) ? @"\p{N}" : @"\p{N}+", RegexOptions.CultureInvariant), "Isolated", invert: false);
            default:
                throw p.Unsupported("pre_tokenizer", type, "Sequence, ByteLevel, Split, Metaspace, Whitespace, WhitespaceSplit, Digits");
        }
    }

    private static string Behavior(string b, JsonParts p) => b is "Removed" or "Isolated" or "MergedWithPrevious" or "MergedWithNext" or "Contiguous" ? b
        : throw p.Unsupported("pre_tokenizer Split behavior", b, "Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");

    /// <summary>ByteLevel: a space before each split that lacks one (with add_prefix_space), GPT-2's regex split, then bytes as characters.</summary>
    private static IPreTokenizer ByteLevelPre(bool addPrefixSpace, bool useRegex) => new Fn(splits =>
    {
        var output = new List<Split>();
        foreach (var s in splits)
        {
            string t = addPrefixSpace && !s.Text.StartsWith(' ') ? " " + s.Text : s.Text;
            var parts = useRegex ? Cut(t, ByteLevel.Gpt2Split, "Isolated", invert: false) : new List<string> { t };
            for (int i = 0; i < parts.Count; i++) output.Add(new Split(ByteLevel.Encode(parts[i]), s.AtStart && i == 0));
        }
        return output;
    });

    private static IPreTokenizer SplitBy(Regex pattern, string behavior, bool invert) => new Fn(splits =>
        splits.SelectMany(s => Cut(s.Text, pattern, behavior, invert).Select((t, i) => new Split(t, s.AtStart && i == 0))).ToList());

    /// <summary>Metaspace: spaces become the replacement, a replacement prepended (always, or only at the input's start), split before each.</summary>
    private static IPreTokenizer Metaspace(string replacement, string scheme, bool split, JsonParts p)
    {
        if (scheme is not ("always" or "first" or "never")) throw p.Unsupported("pre_tokenizer Metaspace prepend_scheme", scheme, "always, first, never");
        var marker = new Regex(Regex.Escape(replacement), RegexOptions.CultureInvariant);
        return new Fn(splits =>
        {
            var output = new List<Split>();
            foreach (var s in splits)
            {
                string t = s.Text.Replace(" ", replacement);
                if (!t.StartsWith(replacement, StringComparison.Ordinal) && (scheme == "always" || (scheme == "first" && s.AtStart))) t = replacement + t;
                var parts = split ? Cut(t, marker, "MergedWithNext", invert: false) : new List<string> { t };
                output.AddRange(parts.Select((x, i) => new Split(x, s.AtStart && i == 0)));
            }
            return output;
        });
    }

    /// <summary>Splits on a pattern's matches with one of tokenizers' delimiter behaviours; empty pieces are dropped.</summary>
    internal static List<string> Cut(string text, Regex pattern, string behavior, bool invert)
    {
        var pieces = new List<(string Text, bool IsMatch)>();
        int at = 0;
        foreach (var (index, length) in CodePointRegex.Matches(pattern, text))
        {
            if (length == 0) continue;
            if (index > at) pieces.Add((text[at..index], invert));
            pieces.Add((text.Substring(index, length), !invert));
            at = index + length;
        }
        if (at < text.Length) pieces.Add((text[at..], invert));
        var output = new List<string>();
        switch (behavior)
        {
            case "Removed":
                output.AddRange(pieces.Where(x => !x.IsMatch).Select(x => x.Text));
                break;
            case "Isolated":
                output.AddRange(pieces.Select(x => x.Text));
                break;
            case "MergedWithPrevious":
                foreach (var x in pieces)
                    if (x.IsMatch && output.Count > 0) output[^1] += x.Text;
                    else output.Add(x.Text);
                break;
            case "MergedWithNext":
                string carry = "";
                foreach (var x in pieces)
                    if (x.IsMatch) carry += x.Text;
                    else { output.Add(carry + x.Text); carry = ""; }
                if (carry.Length > 0) output.Add(carry);
                break;
            case "Contiguous":
                bool lastMatch = false;
                foreach (var x in pieces)
                {
                    if (x.IsMatch && lastMatch && output.Count > 0) output[^1] += x.Text;
                    else output.Add(x.Text);
                    lastMatch = x.IsMatch;
                }
                break;
        }
        return output.Where(x => x.Length > 0).ToList();
    }
}

/// <summary>The post-processors of tokenizer.json: TemplateProcessing, ByteLevel (ids unchanged), Roberta/Bert, Sequence.</summary>
internal static class PostProcessors
{
    private sealed record Fn(Func<List<(string, int)>, bool, List<(string, int)>> F) : IPostProcessor
    {
        public List<(string Token, int Id)> Process(List<(string Token, int Id)> t, bool add) => F(t, add);
    }

    public static IPostProcessor? Build(JsonNode? n, JsonParts p, IReadOnlyList<AddedToken> added)
    {
        if (n is null) return null;
        string type = p.Type(n, "post_processor");
        switch (type)
        {
            case "ByteLevel": return null; // trims offsets only: ids and tokens unchanged
            case "Sequence":
                var all = ((n["processors"] as JsonArray) ?? new JsonArray()).Select(x => Build(x, p, added)).OfType<IPostProcessor>().ToList();
                return new Fn((t, add) => all.Aggregate(t, (acc, pp) => pp.Process(acc, add)));
            case "TemplateProcessing":
                var specials = (n["special_tokens"] as JsonObject ?? new JsonObject()).ToDictionary(kv => kv.Key, kv =>
                    ((JsonParts.Field(kv.Value, "tokens") as JsonArray) ?? new JsonArray()).Select((tok, i) => (p.StrValue(tok, $"post_processor.special_tokens['{kv.Key}'].tokens"),
                        p.IntValue(JsonParts.Field(kv.Value, "ids") is JsonArray ids && i < ids.Count ? ids[i] : null, $"post_processor.special_tokens['{kv.Key}'].ids"))).ToList());
                var single = ((n["single"] as JsonArray) ?? new JsonArray()).Select(piece =>
                    JsonParts.Field(piece, "SpecialToken") is JsonNode st ? (Special: p.Str(st, "id"), Sequence: false)
                    : JsonParts.Field(piece, "Sequence") is not null ? (Special: "", Sequence: true)
                    : throw new CheckpointFormatException(p.Path, null, "post_processor.single holds an unknown piece")).ToList();
                foreach (var s in single.Where(s => !s.Sequence))
                    if (!specials.ContainsKey(s.Special)) throw new CheckpointFormatException(p.Path, null, $"post_processor.single names '{s.Special}', which is not in its special_tokens");
                return Template(single.Select(s => s.Sequence ? null : specials[s.Special]).ToList());
            case "RobertaProcessing":
            case "BertProcessing":
                (string, int) Pair(string key) => n[key] is JsonArray a && a.Count == 2 ? (p.StrValue(a[0], key), p.IntValue(a[1], key)) : throw new CheckpointFormatException(p.Path, null, $"post_processor.{key} must be [token, id]");
                var (cls, sep) = (Pair("cls"), Pair("sep"));
                return Template(new List<List<(string, int)>?> { new() { cls }, null, new() { sep } });
            default:
                throw p.Unsupported("post_processor", type, "TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence");
        }
    }

    /// <summary>A template: special tokens around the sequence (null marks where the sequence goes).</summary>
    internal static IPostProcessor Template(List<List<(string, int)>?> pieces) => new Fn((tokens, add) =>
    {
        if (!add) return tokens;
        var output = new List<(string, int)>();
        foreach (var piece in pieces) output.AddRange(piece ?? tokens);
        return output;
    });
}

/// <summary>The decoders of tokenizer.json: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence.</summary>
internal static class Decoders
{
    private sealed record Fn(Func<List<string>, List<string>> F) : IDecoder { public List<string> DecodeChain(List<string> t) => F(t); }

    public static IDecoder? Build(JsonNode? n, JsonParts p)
    {
        if (n is null) return null;
        string type = p.Type(n, "decoder");
        switch (type)
        {
            case "Sequence":
                var all = ((n["decoders"] as JsonArray) ?? new JsonArray()).Select(x => Build(x, p) ?? throw p.NullEntry("decoder Sequence")).ToList();
                return new Fn(t => all.Aggregate(t, (acc, d) => d.DecodeChain(acc)));
            case "ByteLevel":
                return new Fn(t => new List<string> { ByteLevel.Decode(t) });
            case "Replace":
                var pattern = p.Pattern(n["pattern"], "decoder Replace");
                string content = p.Str(n, "content");
                return new Fn(t => t.Select(x => pattern.Replace(x, content.Replace("$", "$$"))).ToList());
            case "ByteFallback":
                return new Fn(ByteFallback);
            case "Fuse":
                return new Fn(t => new List<string> { string.Concat(t) });
            case "Strip":
                string c = p.Str(n, "content");
                int start = p.Int(n, "start"), stop = p.Int(n, "stop");
                return new Fn(t => t.Select(x => StripToken(x, c, start, stop)).ToList());
            case "Metaspace":
                string replacement = p.OptStr(n, "replacement") ?? "\u2581";
                string scheme = p.OptStr(n, "prepend_scheme") ?? (p.Bool(n, "add_prefix_space", true) ? "always" : "never");
                // As tokenizers does: in the first token every replacement is dropped (the prepended one among them).
                return new Fn(t => t.Select((x, i) => x.Replace(replacement, i == 0 && scheme != "never" ? "" : " ")).ToList());
            default:
                throw p.Unsupported("decoder", type, "Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace");
        }
    }

    /// <summary>Runs of <c>&lt;0xXX&gt;</c> tokens become their UTF-8 text (U+FFFD per token when the bytes are not valid UTF-8).</summary>
    private static List<string> ByteFallback(List<string> tokens)
    {
        var output = new List<string>();
        var bytes = new List<byte>();
        int count = 0;
        void Flush()
        {
            if (count == 0) return;
            try { output.Add(new UTF8Encoding(false, true).GetString(bytes.ToArray())); }
            catch (DecoderFallbackException) { output.AddRange(Enumerable.Repeat("\uFFFD", count)); }
            bytes.Clear();
            count = 0;
        }
        foreach (var t in tokens)
        {
            if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>' &&
                byte.TryParse(t.AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out byte b))
            {
                bytes.Add(b);
                count++;
            }
            else
            {
                Flush();
                output.Add(t);
            }
        }
        Flush();
        return output;
    }

    private static string StripToken(string token, string content, int start, int stop)
    {
        if (content.Length != 1) return token;
        char c = content[0];
        int from = 0, to = token.Length;
        while (from < to && from < start && token[from] == c) from++;
        int stripped = 0;
        while (to > from && stripped < stop && token[to - 1] == c) { to--; stripped++; }
        return token[from..to];
    }
}
