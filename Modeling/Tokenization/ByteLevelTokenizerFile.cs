using System.Text.Json.Nodes;

namespace ShardPipe.Modeling.Tokenization;

/// <summary>
/// A byte-level BPE tokenizer.json without merges — every byte its own token, ids 0..255 in GPT-2's byte-to-character
/// order — for generated checkpoints (<c>shardpipe synth</c>), so that <c>--prompt</c>, <c>serve</c> and the OpenAI
/// clients work on them. A vocabulary larger than 256 gets its last id as the special end-of-sequence token
/// <c>&lt;/s&gt;</c> (the generated config's eos), and every id between as a token of two bytes (never produced by
/// encoding, which has no merges, but decodable: whatever a generated model samples turns into text).
/// </summary>
public static class ByteLevelTokenizerFile
{
    public static string Write(string folder, int vocabSize)
    {
        if (vocabSize < 256) throw new InvalidInputException($"a byte-level tokenizer needs a vocabulary of at least 256, not {vocabSize}");
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[ByteLevel.ByteToChar[b].ToString()] = b;
        for (int id = 256; id < vocabSize - 1; id++)
        {
            int pair = id - 256; // 'a' + byte pairs in order: distinct two-character tokens
            vocab[$"{ByteLevel.ByteToChar[(pair / 256) % 256]}{ByteLevel.ByteToChar[pair % 256]}"] = id;
        }
        var added = new JsonArray();
        if (vocabSize > 256)
            added.Add(new JsonObject
            {
                ["id"] = vocabSize - 1, ["content"] = "</s>", ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
                ["normalized"] = false, ["special"] = true,
            });
        JsonObject ByteLevelPart() => new() { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true };
        var file = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = added,
            ["normalizer"] = null,
            ["pre_tokenizer"] = ByteLevelPart(),
            ["post_processor"] = ByteLevelPart(),
            ["decoder"] = ByteLevelPart(),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = null, ["end_of_word_suffix"] = null,
                ["fuse_unk"] = false, ["byte_fallback"] = false, ["vocab"] = vocab, ["merges"] = new JsonArray(),
            },
        };
        string path = Path.Combine(folder, "tokenizer.json");
        File.WriteAllText(path, file.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        return path;
    }
}
