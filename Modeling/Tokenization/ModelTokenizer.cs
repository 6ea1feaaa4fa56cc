using ShardPipe.Checkpoints;
using System.Text.Json.Nodes;

namespace ShardPipe.Modeling.Tokenization;

/// <summary>Ids and their tokens, as <c>tokenizer(text)</c> gives them.</summary>
public sealed record TokenEncoding(int[] Ids, string[] Tokens);

/// <summary>
/// A model folder's tokenizer with Hugging Face's semantics, whichever format the folder holds — as AutoTokenizer
/// picks them: <c>tokenizer.json</c> (the fast tokenizer), else a SentencePiece <c>tokenizer.model</c> (the slow
/// LlamaTokenizer: BOS/EOS from add_bos_token/add_eos_token, legacy mode), else GPT-2's <c>vocab.json</c> +
/// <c>merges.txt</c>. <see cref="Encode"/> adds special tokens by default, as <c>tokenizer(text)</c>;
/// <see cref="Decode"/> keeps them by default, as <c>tokenizer.decode(ids)</c>.
/// </summary>
public sealed class ModelTokenizer
{
    private readonly Func<string, bool, List<(string Token, int Id)>> _encode;
    private readonly Func<IReadOnlyList<int>, bool, string> _decode;

    /// <summary>Which format was read: <c>tokenizer.json</c>, <c>tokenizer.model</c> or <c>vocab.json+merges.txt</c>.</summary>
    public string Format { get; }
    /// <summary>Special tokens by content: the named ones (bos, eos, unk, pad, additional) and added tokens marked special.</summary>
    public IReadOnlyDictionary<string, int> SpecialTokens { get; }
    public int? BosTokenId { get; }
    public int? EosTokenId { get; }
    /// <summary>Whether decoding applies transformers' <c>clean_up_tokenization_spaces</c>.</summary>
    public bool CleansUpSpaces { get; }
    /// <summary>What tokenizer_config.json and special_tokens_map.json say (special tokens by name, the chat template, …).</summary>
    public TokenizerConfig Config { get; }

    private ModelTokenizer(string format, Func<string, bool, List<(string, int)>> encode, Func<IReadOnlyList<int>, bool, string> decode,
        IReadOnlyDictionary<string, int> special, TokenizerConfig config, bool cleanUp)
    {
        CleansUpSpaces = cleanUp;
        Config = config;
        Format = format;
        _encode = encode;
        _decode = decode;
        SpecialTokens = special;
        BosTokenId = config.BosToken is { } b && special.TryGetValue(b, out int bi) ? bi : null;
        EosTokenId = config.EosToken is { } e && special.TryGetValue(e, out int ei) ? ei : null;
    }

    public static bool Exists(string folder) =>
        File.Exists(Path.Combine(folder, "tokenizer.json")) || File.Exists(Path.Combine(folder, "tokenizer.model")) || File.Exists(Path.Combine(folder, "vocab.json"));

    public static ModelTokenizer Load(string folder)
    {
        var config = TokenizerConfig.Read(folder);
        string json = Path.Combine(folder, "tokenizer.json"), sp = Path.Combine(folder, "tokenizer.model");
        string vocab = Path.Combine(folder, "vocab.json"), merges = Path.Combine(folder, "merges.txt");
        if (File.Exists(json)) return FromTokenizerJson(json, config);
        if (File.Exists(sp)) return FromSentencePiece(sp, config);
        if (File.Exists(vocab) && File.Exists(merges)) return FromVocabAndMerges(vocab, merges, folder, config);
        throw new CheckpointNotFoundException($"no tokenizer in {folder}", new[] { json, sp, vocab });
    }

    /// <summary><c>tokenizer(text, add_special_tokens=…)</c>: the ids and their tokens.</summary>
    public TokenEncoding Encode(string text, bool addSpecialTokens = true)
    {
        var tokens = _encode(text, addSpecialTokens);
        return new TokenEncoding(tokens.Select(t => t.Id).ToArray(), tokens.Select(t => t.Token).ToArray());
    }

    /// <summary><c>tokenizer.decode(ids, skip_special_tokens=…)</c>.</summary>
    public string Decode(IEnumerable<long> ids, bool skipSpecialTokens = false) =>
        _decode(ids.Select(i => i is >= 0 and <= int.MaxValue ? (int)i : throw new InvalidInputException($"token id {i} is out of range")).ToList(), skipSpecialTokens);

    /// <summary>A decoder for tokens that arrive one step at a time (<see cref="StreamingDecoder"/>).</summary>
    public StreamingDecoder Stream(bool skipSpecialTokens = true) => new(this, skipSpecialTokens);

    // ---- tokenizer.json (the fast tokenizer) ----

    private static ModelTokenizer FromTokenizerJson(string path, TokenizerConfig config)
    {
        // GPT2TokenizerFast (and its kin) set their ByteLevel pre-tokenizer's add_prefix_space from the config.
        var tj = TokenizerJson.Load(path, byteLevelAddPrefixSpace: config.AddPrefixSpace);
        var special = SpecialMap(tj.AddedTokens.Concat(config.AddedTokens), config, t => tj.Model.TokenToId(t));
        if (config.IsLlama)
        {
            // LlamaTokenizerFast rebuilds its post-processor from add_bos_token / add_eos_token (update_post_processor).
            var pieces = new List<List<(string, int)>?>();
            if ((config.AddBosToken ?? true) && config.BosToken is { } bos && special.TryGetValue(bos, out int bosId)) pieces.Add(new() { (bos, bosId) });
            pieces.Add(null);
            if ((config.AddEosToken ?? false) && config.EosToken is { } eos && special.TryGetValue(eos, out int eosId)) pieces.Add(new() { (eos, eosId) });
            tj.PostProcessor = PostProcessors.Template(pieces);
        }
        var specialIds = special.Values.ToHashSet();
        bool cleanUp = config.CleanUpTokenizationSpaces ?? !config.IsLlama; // LlamaTokenizerFast defaults to false, PreTrainedTokenizerFast to true
        return new ModelTokenizer("tokenizer.json", tj.Encode, (ids, skip) =>
        {
            string text = tj.Decode(skip ? ids.Where(i => !specialIds.Contains(i)) : ids, skip);
            return cleanUp ? TokenizerConfig.CleanUp(text) : text;
        }, special, config, cleanUp);
    }

    // ---- tokenizer.model (the slow LlamaTokenizer) ----

    private static ModelTokenizer FromSentencePiece(string path, TokenizerConfig config)
    {
        var sp = SentencePieceModel.Load(path);
        config = config with { BosToken = config.BosToken ?? "<s>", EosToken = config.EosToken ?? "</s>", UnkToken = config.UnkToken ?? "<unk>" };
        bool cleanUp = config.CleanUpTokenizationSpaces ?? false; // LlamaTokenizer's default
        int IdOf(string t) => sp.PieceToId(t);
        int? Known(string t)
        {
            int id = sp.PieceToId(t);
            return id != sp.UnkId || t == sp.Pieces[sp.UnkId].Text ? id : null;
        }
        var special = SpecialMap(config.AddedTokens, config, Known);
        var added = config.AddedTokens.Count > 0 ? config.AddedTokens
            : special.Select(kv => new AddedToken(kv.Value, kv.Key, true)).ToList();
        var splitter = new AddedTokenSplitter(added);
        bool legacy = config.Legacy ?? true, addBos = config.AddBosToken ?? true, addEos = config.AddEosToken ?? false;
        bool prefixSpace = config.AddPrefixSpace ?? true;
        const char Underline = SentencePieceModel.Space;

        List<(string, int)> Encode(string text, bool addSpecial)
        {
            var pieces = new List<(string, int)>();
            // Non-legacy mode: the text's own ▁ count as spaces and one ▁ goes in front (dropped again before a special token).
            if (!legacy && text.Length > 0) text = (prefixSpace ? Underline.ToString() : "") + text.Replace(Underline, ' ');
            foreach (var seg in splitter.Split(text))
            {
                if (seg.Token is { } t) { pieces.Add((t.Content, t.Id)); continue; }
                if (legacy || !(seg.Text.StartsWith(Underline) || seg.Text.StartsWith(' ')))
                    pieces.AddRange(sp.Encode(seg.Text, addDummyPrefix: legacy));
                else
                {
                    // As LlamaTokenizer._tokenize: encode "<unk>" + text without the dummy prefix and drop the unk's pieces.
                    string unk = config.UnkToken!;
                    int unkLength = sp.Encode(unk, addDummyPrefix: false).Count;
                    var all = sp.Encode(unk + seg.Text, addDummyPrefix: false);
                    pieces.AddRange(all.Count >= unkLength ? all.Skip(unkLength) : all);
                }
            }
            if (!legacy && pieces.Count > 1 && pieces[0].Item1 == Underline.ToString() && special.ContainsKey(pieces[1].Item1)) pieces.RemoveAt(0);
            if (addSpecial)
            {
                if (addBos) pieces.Insert(0, (config.BosToken!, IdOf(config.BosToken!)));
                if (addEos) pieces.Add((config.EosToken!, IdOf(config.EosToken!)));
            }
            return pieces;
        }

        string Decode(IReadOnlyList<int> ids, bool skip)
        {
            var specialIds = special.Values.ToHashSet();
            var tokens = ids.Where(i => !(skip && specialIds.Contains(i))).Select(i => i < sp.Pieces.Count ? sp.Pieces[i].Text
                : added.FirstOrDefault(a => a.Id == i)?.Content ?? throw new InvalidInputException($"token id {i} is outside the vocabulary (0..{sp.Pieces.Count - 1})")).ToList();
            if (tokens.Count == 0) return "";
            // LlamaTokenizer.convert_tokens_to_string: the leading ▁ we add is removed; special tokens are not decoded by sentencepiece.
            if (tokens[0].StartsWith(Underline) && prefixSpace) tokens[0] = tokens[0][1..];
            var output = new System.Text.StringBuilder();
            var current = new List<string>();
            bool prevSpecial = false;
            for (int i = 0; i < tokens.Count; i++)
            {
                if (special.ContainsKey(tokens[i]))
                {
                    if (!prevSpecial && i != 0 && legacy) output.Append(' ');
                    output.Append(sp.Decode(current)).Append(tokens[i]);
                    prevSpecial = true;
                    current.Clear();
                }
                else
                {
                    if (prevSpecial && i == 1 && prefixSpace && !tokens[i].StartsWith(Underline)) output.Append(' ');
                    current.Add(tokens[i]);
                    prevSpecial = false;
                }
            }
            output.Append(sp.Decode(current));
            string text = output.ToString();
            return cleanUp ? TokenizerConfig.CleanUp(text) : text;
        }

        return new ModelTokenizer("tokenizer.model", Encode, Decode, special, config, cleanUp);
    }

    // ---- vocab.json + merges.txt (the slow GPT2Tokenizer) ----

    private static ModelTokenizer FromVocabAndMerges(string vocabPath, string mergesPath, string folder, TokenizerConfig config)
    {
        var vocab = (ReadJson(vocabPath) as JsonObject ?? throw new CheckpointFormatException(vocabPath, null, "not a JSON object"))
            .ToDictionary(kv => kv.Key, kv => kv.Value is JsonValue v && v.TryGetValue(out int id) ? id : throw new CheckpointFormatException(vocabPath, kv.Key, "id must be an integer"), StringComparer.Ordinal);
        var merges = File.ReadAllLines(mergesPath).Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal)).Select((l, i) =>
        {
            int space = l.IndexOf(' ', 1);
            return space > 0 ? (l[..space], l[(space + 1)..]) : throw new CheckpointFormatException(mergesPath, null, $"line {i + 1} '{l}' is not two tokens");
        }).ToList();
        var bpe = new BpeModel(vocab, merges, source: mergesPath);
        // GPT2Tokenizer's special tokens default to <|endoftext|>; added_tokens.json may add more.
        config = config with
        {
            BosToken = config.BosToken ?? (vocab.ContainsKey("<|endoftext|>") ? "<|endoftext|>" : null),
            EosToken = config.EosToken ?? (vocab.ContainsKey("<|endoftext|>") ? "<|endoftext|>" : null),
            UnkToken = config.UnkToken ?? (vocab.ContainsKey("<|endoftext|>") ? "<|endoftext|>" : null),
        };
        var added = config.AddedTokens.ToList();
        if (ReadJson(Path.Combine(folder, "added_tokens.json")) is JsonObject extra)
            foreach (var (k, v) in extra)
                if (v is JsonValue x && x.TryGetValue(out int id) && added.All(a => a.Content != k)) added.Add(new AddedToken(id, k, false));
        var special = SpecialMap(added, config, t => vocab.TryGetValue(t, out int id) ? id : null);
        foreach (var (content, id) in special)
            if (added.All(a => a.Content != content)) added.Add(new AddedToken(id, content, true));
        var splitter = new AddedTokenSplitter(added);
        var addedById = added.ToDictionary(a => a.Id, a => a.Content);
        bool cleanUp = config.CleanUpTokenizationSpaces ?? true; // GPT2Tokenizer's default in 4.38

        List<(string, int)> Encode(string text, bool addSpecial)
        {
            // GPT2Tokenizer.prepare_for_tokenization: a space in front when add_prefix_space and the text starts with none.
            if ((config.AddPrefixSpace ?? false) && text.Length > 0 && !char.IsWhiteSpace(text[0])) text = " " + text;
            var tokens = new List<(string, int)>();
            foreach (var seg in splitter.Split(text))
            {
                if (seg.Token is { } t) { tokens.Add((t.Content, t.Id)); continue; }
                foreach (System.Text.RegularExpressions.Match m in ByteLevel.Gpt2Split.Matches(seg.Text))
                    tokens.AddRange(bpe.Tokenize(ByteLevel.Encode(m.Value)));
            }
            return tokens;
        }

        string Decode(IReadOnlyList<int> ids, bool skip)
        {
            var specialIds = special.Values.ToHashSet();
            var tokens = ids.Where(i => !(skip && specialIds.Contains(i)))
                .Select(i => addedById.GetValueOrDefault(i) ?? bpe.IdToToken(i) ?? throw new InvalidInputException($"token id {i} is not in the vocabulary")).ToList();
            string text = ByteLevel.Decode(tokens);
            return cleanUp ? TokenizerConfig.CleanUp(text) : text;
        }

        return new ModelTokenizer("vocab.json+merges.txt", Encode, Decode, special, config, cleanUp);
    }

    /// <summary>Special tokens by content: added tokens marked special, and the named ones the vocabulary holds.</summary>
    private static Dictionary<string, int> SpecialMap(IEnumerable<AddedToken> added, TokenizerConfig config, Func<string, int?> idOf)
    {
        var map = new Dictionary<string, int>(StringComparer.Ordinal);
        var all = added.ToList();
        foreach (var t in all.Where(t => t.Special)) map.TryAdd(t.Content, t.Id);
        foreach (var name in config.NamedSpecialTokens)
        {
            if (map.ContainsKey(name)) continue;
            int? id = all.FirstOrDefault(a => a.Content == name)?.Id ?? idOf(name);
            if (id is { } i) map[name] = i;
        }
        return map;
    }

    private static JsonNode? ReadJson(string path)
    {
        if (!File.Exists(path)) return null;
        return StrictJson.Parse(path, File.ReadAllText(path));
    }
}
