using System.Text.Json.Nodes;

namespace ShardPipe.Host.Bench.Gguf;

/// <summary>
/// The vocabulary a GGUF file carries (tokenizer.ggml.tokens, token_type, merges), read from a checkpoint's
/// tokenizer.json (a BPE model): every id below vocab_size gets its token string; added tokens marked special are
/// control tokens (ggml type 3), other added tokens user-defined (4), ids that the file does not name are unused
/// placeholders (5). The comparison feeds token ids, so only the vocabulary's size and ids must agree.
/// </summary>
public sealed record GgufVocabulary(IReadOnlyList<string> Tokens, IReadOnlyList<int> Types, IReadOnlyList<string> Merges)
{
    public const int Normal = 1, Control = 3, UserDefined = 4, Unused = 5;

    public static GgufVocabulary FromFolder(string folder, int vocabSize)
    {
        string path = Path.Combine(folder, "tokenizer.json");
        if (!File.Exists(path))
            throw new InvalidInputException($"{path}: not found; the GGUF writer takes the vocabulary from tokenizer.json (shardpipe synth writes one)");
        JsonObject root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidInputException($"{path}: not a JSON object");
        }
        catch (System.Text.Json.JsonException ex)
        {
            throw new InvalidInputException($"{path}: not valid JSON: {ex.Message}", ex);
        }
        var model = root["model"] as JsonObject;
        if (model?["type"]?.GetValue<string>() != "BPE" || model["vocab"] is not JsonObject vocab)
            throw new UnsupportedException($"{path}: model.type must be \"BPE\" with a vocab object for the GGUF writer");
        var tokens = new string?[vocabSize];
        var types = new int[vocabSize];
        void Put(string token, long id, int type, string field)
        {
            if (id < 0 || id >= vocabSize) throw new InvalidInputException($"{path}: {field} '{token}' has id {id}, outside the vocabulary of {vocabSize}");
            tokens[id] = token;
            types[id] = type;
        }
        foreach (var (token, id) in vocab) Put(token, id!.GetValue<long>(), Normal, "model.vocab");
        if (root["added_tokens"] is JsonArray added)
            foreach (var a in added.OfType<JsonObject>())
                Put(a["content"]!.GetValue<string>(), a["id"]!.GetValue<long>(), a["special"]?.GetValue<bool>() == true ? Control : UserDefined, "added_tokens");
        for (int i = 0; i < vocabSize; i++)
            if (tokens[i] is null) { tokens[i] = $"[PAD{i}]"; types[i] = Unused; }
        var merges = new List<string>();
        if (model["merges"] is JsonArray ms)
            foreach (var m in ms)
                merges.Add(m is JsonArray pair ? $"{pair[0]!.GetValue<string>()} {pair[1]!.GetValue<string>()}" : m!.GetValue<string>());
        return new GgufVocabulary(tokens!, types, merges);
    }
}
