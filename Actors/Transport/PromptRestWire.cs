using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;

namespace ShardPipe.Actors.Transport;

/// <summary>A prompt's rest still to prefill (<see cref="ChunkedPrefill.Rest"/>) to and from the message it travels in (<see cref="PromptRest"/>).</summary>
public static class PromptRestWire
{
    public static PromptRest? ToWire(ChunkedPrefill.Rest? rest) => rest is null ? null : new(rest.InputIds, rest.AttentionMask, rest.PositionIds, rest.Chunk);

    public static ChunkedPrefill.Rest FromWire(PromptRest rest) => new(rest.InputIds, rest.AttentionMask, rest.PositionIds, rest.Chunk);
}
