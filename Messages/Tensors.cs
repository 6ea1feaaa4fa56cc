using MessagePack;

namespace ShardPipe.Messages;

/// <summary>
/// A tensor on the wire: safetensors dtype code, shape, and raw little-endian bytes. <see cref="Data"/> may be a view
/// of tensor storage (sending) or of the received frame (receiving); see <see cref="WireBytes"/>.
/// </summary>
[MessagePackObject]
public sealed record TensorPayload(
    [property: Key(0)] string DType,
    [property: Key(1)] long[] Shape,
    [property: Key(2)] ReadOnlyMemory<byte> Data);

/// <summary>One piece of a large transfer (weights or activations), checksummed, acknowledged by the receiver.</summary>
[MessagePackObject]
public sealed record TensorChunk(
    [property: Key(0)] string TransferId,
    [property: Key(1)] int Sequence,
    [property: Key(2)] long Offset,
    [property: Key(3)] long TotalBytes,
    [property: Key(4)] uint Crc32,
    [property: Key(5)] ReadOnlyMemory<byte> Data) : IShardPipeMessage;

/// <summary>The receiver has everything up to and including <see cref="Sequence"/>; the sender may move its window.</summary>
[MessagePackObject]
public sealed record ChunkAck(
    [property: Key(0)] string TransferId,
    [property: Key(1)] int Sequence) : IShardPipeMessage;

/// <summary>
/// One piece of a large message (an activation, a logits tensor, a big slice), sent in order; the receiver
/// reassembles the pieces and decodes the whole under <see cref="Manifest"/>. Keeps every frame under
/// Akka.Remote's limit and off the large-object heap.
/// </summary>
[MessagePackObject]
public sealed record MessageChunk(
    [property: Key(0)] string TransferId,
    [property: Key(1)] int Sequence,
    [property: Key(2)] int Count,
    [property: Key(3)] string Manifest,
    [property: Key(4)] uint Crc32,
    [property: Key(5)] ReadOnlyMemory<byte> Data) : IShardPipeMessage;
