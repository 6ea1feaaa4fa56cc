using Akka.Actor;
using Akka.TestKit.Xunit2;
using ShardPipe.Actors.Transport;
using ShardPipe.Messages;

namespace ShardPipe.Tests.Actors;

/// <summary>TellChunked to an actor of the same system: the message itself, with the implicit sender kept.</summary>
public class ChunkedTellTests : TestKit
{
    private sealed class Relay : ReceiveActor
    {
        public Relay(IActorRef target) => ReceiveAny(m => target.TellChunked(m)); // no sender given: this actor
    }

    [Fact]
    public void A_large_message_to_a_local_actor_arrives_as_itself_from_the_calling_actor()
    {
        // 200 KB of payload: to another node this would go as chunks.
        var big = new ForwardResult("r1", new TensorPayload("F32", new long[] { 50_000 }, new byte[200_000]));
        Assert.True(Chunking.Split(big).Count() > 1);
        var relay = Sys.ActorOf(Props.Create(() => new Relay(TestActor)));
        relay.Tell(big);
        Assert.Same(big, ExpectMsg<ForwardResult>());
        Assert.Equal(relay, LastSender);
    }
}
