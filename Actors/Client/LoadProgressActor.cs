using Akka.Actor;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Client;

/// <summary>Receives per-device load progress and hands each report to a callback (the CLI draws progress lines).</summary>
public sealed class LoadProgressActor : ReceiveActor
{
    public LoadProgressActor(Action<SliceProgress> report) => Receive<SliceProgress>(report);
}
