using Akka.Actor;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Transport;

/// <summary>Sending a message that may exceed one Akka.Remote frame.</summary>
public static class ChunkedTell
{
    /// <summary>
    /// Tells <paramref name="target"/> the message: as itself to an actor in this system (nothing is serialized
    /// locally), else in <see cref="MessageChunk"/>s when its encoding exceeds <see cref="Protocol.MaxChunkBytes"/>.
    /// Without <paramref name="sender"/>, the sender is the calling actor, as with <c>Tell(message)</c>.
    /// </summary>
    public static void TellChunked(this IActorRef target, object message, IActorRef? sender = null)
    {
        var parts = target is IInternalActorRef { IsLocal: true } ? new[] { message } : Chunking.Split(message);
        foreach (var part in parts)
        {
            if (sender is null) target.Tell(part); // the implicit sender: the actor whose message is being handled
            else target.Tell(part, sender);
        }
    }
}
