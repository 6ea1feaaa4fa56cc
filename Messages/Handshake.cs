using MessagePack;

namespace ShardPipe.Messages;

/// <summary>
/// The node-to-node handshake, sent to every peer's <c>/user/handshake</c> when it comes up. Its layout is frozen
/// across protocol versions (manifest "hello", keys 0–2), so that any two versions can tell they differ.
/// </summary>
[MessagePackObject]
public sealed record Hello(
    [property: Key(0)] int ProtocolVersion,
    [property: Key(1)] long MaxFrameSize,
    [property: Key(2)] string NodeName) : IShardPipeMessage;

[MessagePackObject]
public sealed record Ping([property: Key(0)] long Nonce) : IShardPipeMessage;

[MessagePackObject]
public sealed record Pong([property: Key(0)] long Nonce) : IShardPipeMessage;
