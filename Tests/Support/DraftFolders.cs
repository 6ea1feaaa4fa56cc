using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Tests.Support;

/// <summary>Generated draft models for speculative decoding's tests: small Llamas with a chosen vocabulary and (from 256 ids) a byte-level tokenizer.</summary>
public static class DraftFolders
{
    /// <summary>A 1-layer Llama (hidden 32) with <paramref name="vocab"/> ids, written under <paramref name="tmp"/>.</summary>
    public static string Small(TempDir tmp, int vocab = 256, string name = "draft", ulong seed = 77, int hidden = 32, int layers = 1)
    {
        string folder = tmp.Sub(name);
        SyntheticLlama.Write(folder, new SyntheticLlamaSpec
        {
            HiddenSize = hidden, IntermediateSize = 2 * hidden, NumLayers = layers, NumHeads = 2, NumKeyValueHeads = 1, VocabSize = vocab,
            MaxPositions = 512, Seed = seed,
        });
        if (vocab >= 256) ByteLevelTokenizerFile.Write(folder, vocab); // a byte-level tokenizer needs every byte
        return folder;
    }
}
