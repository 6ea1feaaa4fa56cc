using MessagePack;

namespace ShardPipe.Messages;

/// <summary>
/// Prefix caching on a request's first prefill step (<see cref="StageInput.Prefix"/>; null on every later step). The
/// first stage hashes the prompt's full blocks (<see cref="BlockHashes"/>: a chain, each over every token up to and
/// including its block) and decides how many leading blocks every stage reuses from its cache
/// (<see cref="ReusedBlocks"/>; the step's positions start after them). A stage that lacks one of them sends the step
/// back to the first stage with <see cref="ReusedBlocks"/> = −1 and <see cref="MaxBlocks"/> = the blocks it has, so the
/// first stage decides again with fewer; every stage drops what the request wrote before when its first step comes again.
/// </summary>
[MessagePackObject]
public sealed record PrefixPlan(
    [property: Key(0)] long[] PromptIds,
    [property: Key(1)] int Chunk,
    [property: Key(2)] int BlockTokens,
    [property: Key(3)] long[] BlockHashes,
    [property: Key(4)] int ReusedBlocks,
    [property: Key(5)] int MaxBlocks);
