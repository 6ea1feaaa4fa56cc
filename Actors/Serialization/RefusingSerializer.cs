using Akka.Actor;
using Akka.Serialization;

namespace ShardPipe.Actors.Serialization;

/// <summary>
/// Takes the place of Akka's JSON serializer (<c>json</c>, bound to <c>System.Object</c>), which would build objects of
/// any type named on the wire: nothing is serialized or deserialized with it. Every cross-node message is a ShardPipe
/// contract (<see cref="ShardPipeSerializer"/>) or one of Akka's own system messages (their own serializers); a frame
/// that names this serializer is refused, logged and dropped by Akka.Remote.
/// </summary>
public sealed class RefusingSerializer : Serializer
{
    public RefusingSerializer(ExtendedActorSystem system) : base(system) { }

    /// <summary>Akka passes the replaced serializer's settings section; there are none to read.</summary>
    public RefusingSerializer(ExtendedActorSystem system, Akka.Configuration.Config settings) : base(system) { }

    public override int Identifier => 1; // the identifier Akka gives its JSON serializer

    public override bool IncludeManifest => false;

    public override byte[] ToBinary(object obj) =>
        throw new System.Runtime.Serialization.SerializationException($"{obj.GetType().FullName} is not a ShardPipe wire message; it does not cross nodes");

    public override object FromBinary(byte[] bytes, Type? type)
    {
        Diagnostics.NodeDiagnostics.For(system).Refused();
        throw new System.Runtime.Serialization.SerializationException("refused a message serialized by type name (Akka's JSON serializer is not accepted from the wire)");
    }
}
