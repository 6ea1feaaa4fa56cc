using MessagePack;

namespace ShardPipe.Messages;

/// <summary>Sampling settings; temperature 0 (or Greedy) means argmax.</summary>
[MessagePackObject]
public sealed record SamplingSettings(
    [property: Key(0)] bool Greedy,
    [property: Key(1)] double Temperature,
    [property: Key(2)] int TopK,
    [property: Key(3)] double TopP,
    [property: Key(4)] long Seed,
    [property: Key(5)] double RepetitionPenalty = 1.0);

/// <summary>
/// Speculative decoding for a request: <see cref="Method"/> proposes up to <see cref="Tokens"/> draft tokens per step
/// ("ngram": prompt lookup; "draft": the model in <see cref="DraftModel"/>, a folder on the first stage's node, run
/// there) and the target verifies them in one pass through the pipeline.
/// </summary>
[MessagePackObject]
public sealed record SpeculationSettings(
    [property: Key(0)] string Method,
    [property: Key(1)] int Tokens,
    [property: Key(2)] string? DraftModel = null);

/// <summary>What a client sends the coordinator to run through the pipeline: a <see cref="Generate"/> or a <see cref="Forward"/>.</summary>
public interface IClientRequest : IShardPipeMessage
{
    string RequestId { get; }
    long[][] InputIds { get; }
    long[][]? AttentionMask { get; }
}

/// <summary>
/// A client asks for greedy or sampled generation; positions follow the mask, as HF's <c>generate</c>. A request that
/// survived a fault continues with <see cref="Resume"/>: the tokens it already received, one array per step; the
/// prompt plus those tokens are prefilled and decoding goes on at the next step (the sampler's draws replayed).
/// <see cref="PrefillChunk"/> &gt; 0 prefills a longer prompt that many positions per step (chunked prefill), so that
/// the stages' other requests, merged into the same steps, are never held up longer than one chunk; 0 = at once.
/// </summary>
[MessagePackObject]
public sealed record Generate(
    [property: Key(0)] string RequestId,
    [property: Key(1)] long[][] InputIds,
    [property: Key(2)] long[][]? AttentionMask,
    [property: Key(4)] int MaxNewTokens,
    [property: Key(5)] bool IgnoreEos,
    [property: Key(6)] SamplingSettings Sampling,
    [property: Key(7)] long[][]? Resume = null,
    [property: Key(8)] int PrefillChunk = 0,
    [property: Key(9)] SpeculationSettings? Speculate = null) : IClientRequest;
// Key 3 (position ids, used only by forward passes sent as Generate with MaxNewTokens 0) is retired: see Forward.

/// <summary>A client asks for one forward pass: the last position's logits of every row (<see cref="ForwardResult"/>).</summary>
[MessagePackObject]
public sealed record Forward(
    [property: Key(0)] string RequestId,
    [property: Key(1)] long[][] InputIds,
    [property: Key(2)] long[][]? AttentionMask,
    [property: Key(3)] long[][]? PositionIds) : IClientRequest;

/// <summary>
/// Work for one hop of the pipeline: ids (first hop) or hidden states, plus what every layer needs; the plan epoch
/// it runs under and the coordinator to tell when it ends. <see cref="Generation"/> is null for a forward pass.
/// </summary>
[MessagePackObject]
public sealed record StageInput(
    [property: Key(0)] string RequestId,
    [property: Key(1)] int Step,
    [property: Key(2)] int Hop,
    [property: Key(3)] TensorPayload? Hidden,
    [property: Key(4)] long[][]? InputIds,
    [property: Key(5)] long[][] AttentionMask,
    [property: Key(6)] long[][] PositionIds,
    [property: Key(7)] string ReplyTo,
    [property: Key(8)] GenerationState? Generation,
    [property: Key(10)] int PlanEpoch,
    [property: Key(11)] string? Coordinator,
    [property: Key(12)] PrefixPlan? Prefix = null) : IShardPipeMessage;
// Key 9 (a send timestamp for hop timing) is retired: activation-link frames carry it in their header.

/// <summary>A generation's state that travels with the activations (so the last hop can decide and loop back).</summary>
[MessagePackObject]
public sealed record GenerationState(
    [property: Key(0)] int MaxNewTokens,
    [property: Key(1)] bool IgnoreEos,
    [property: Key(2)] long[] EosTokenIds,
    [property: Key(3)] long PadTokenId,
    [property: Key(4)] bool[] Finished,
    [property: Key(5)] SamplingSettings Sampling,
    [property: Key(8)] long[][]? History = null,
    [property: Key(9)] PromptRest? Prefill = null,
    [property: Key(10)] SpeculationSettings? Speculate = null,
    [property: Key(11)] long[]? Drafts = null,
    [property: Key(12)] float[]? DraftProbs = null);
// DraftProbs: a sampled draft model's distribution q at each of Drafts (Drafts.Length rows of the vocabulary,
// flattened), which the head's rejection rule needs; null for deterministic drafts (prompt lookup, greedy drafts).
// Keys 6 and 7 (plan epoch, coordinator) moved to StageInput, where forward passes have them too.

/// <summary>
/// The part of a prompt not yet prefilled (chunked prefill): its ids, mask and positions, taken <see cref="Chunk"/>
/// positions per step. The last hop loops the next chunk back to the first instead of sampling, until none is left.
/// </summary>
[MessagePackObject]
public sealed record PromptRest(
    [property: Key(0)] long[][] InputIds,
    [property: Key(1)] long[][] AttentionMask,
    [property: Key(2)] long[][] PositionIds,
    [property: Key(3)] int Chunk);

/// <summary>
/// Several requests' steps for one stage, sent as one message because the stage before ran them as one merged step
/// (continuous batching), so that they arrive — and run — together. <see cref="Released"/>: requests that ended in that
/// step (released on arrival, as <see cref="ReleaseRequest"/>), so that a first stage waiting for them knows at once.
/// </summary>
[MessagePackObject]
public sealed record StageBatch(
    [property: Key(0)] StageInput[] Steps,
    [property: Key(1)] string[] Released) : IShardPipeMessage;

/// <summary>New tokens of one step, one per row (streamed to the caller).</summary>
[MessagePackObject]
public sealed record TokensGenerated(
    [property: Key(0)] string RequestId,
    [property: Key(1)] int Step,
    [property: Key(2)] long[] Tokens,
    // A speculative step delivers several tokens: Tokens is step Step's, More the steps after it, in order; Proposed and
    // Accepted count the step's draft tokens and those the target agreed with.
    [property: Key(3)] long[][]? More = null,
    [property: Key(4)] int Proposed = 0,
    [property: Key(5)] int Accepted = 0) : IShardPipeMessage;

/// <summary>The last hop's logits for a forward request: (B, V) at the last position of each row.</summary>
[MessagePackObject]
public sealed record ForwardResult(
    [property: Key(0)] string RequestId,
    [property: Key(1)] TensorPayload LastLogits) : IShardPipeMessage;

[MessagePackObject]
public sealed record GenerationDone(
    [property: Key(0)] string RequestId,
    [property: Key(1)] int Steps) : IShardPipeMessage;

/// <summary>A request ended in error; names the stage (node/device) at fault. <see cref="Retryable"/>: the cluster is recovering (a stage was lost, the plan changed); the caller may resume once it is ready.</summary>
[MessagePackObject]
public sealed record RequestFailed(
    [property: Key(0)] string RequestId,
    [property: Key(1)] string Stage,
    [property: Key(2)] string Reason,
    [property: Key(3)] bool Retryable = false,
    // The request itself can never run as given (its ids, its length, its KV worst case, a reused id): the caller gets
    // an invalid-input error (exit 2, HTTP 400), never one to retry.
    [property: Key(4)] bool Invalid = false) : IShardPipeMessage;

/// <summary>Free a request's KV cache on a worker.</summary>
[MessagePackObject]
public sealed record ReleaseRequest([property: Key(0)] string RequestId) : IShardPipeMessage;

/// <summary>
/// A worker asks the worker at <paramref name="Target"/> (the path its route names) for an activation link: a
/// direct socket for the <see cref="StageInput"/>s it sends there.
/// </summary>
[MessagePackObject]
public sealed record OpenLink([property: Key(0)] string Target) : IShardPipeMessage;

/// <summary>
/// The answer to <see cref="OpenLink"/>: where to connect and the one-time token to present (valid briefly), the
/// largest frame the link takes; or, with <c>Refused</c> set, why there is no link (the sender keeps to actor messages).
/// </summary>
[MessagePackObject]
public sealed record LinkOffer(
    [property: Key(0)] string Target,
    [property: Key(1)] string Host,
    [property: Key(2)] int Port,
    [property: Key(3)] byte[] Token,
    [property: Key(4)] int MaxFrameBytes,
    [property: Key(5)] string? Refused = null) : IShardPipeMessage;
