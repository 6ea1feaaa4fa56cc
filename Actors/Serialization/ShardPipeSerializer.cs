using Akka.Actor;
using Akka.Serialization;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Serialization;

/// <summary>
/// The one serializer for every cross-node ShardPipe message (bound to <see cref="IShardPipeMessage"/> in
/// reference.conf). Short manifests from <see cref="MessageCodec"/>; an unknown manifest or malformed bytes raise
/// a <see cref="ProtocolException"/>, which Akka.Remote logs and drops — never a fallback.
/// </summary>
public sealed class ShardPipeSerializer : SerializerWithStringManifest
{
    public const int SerializerId = 4711;

    public ShardPipeSerializer(ExtendedActorSystem system) : base(system) { }

    public override int Identifier => SerializerId;

    public override string Manifest(object o) => MessageCodec.Manifest(o);

    public override byte[] ToBinary(object obj) => MessageCodec.Encode(obj);

    public override object FromBinary(byte[] bytes, string manifest) => MessageCodec.Decode(bytes, manifest);
}
