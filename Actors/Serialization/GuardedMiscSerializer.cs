using Akka.Actor;
using Akka.Remote.Serialization;
using Akka.Serialization;

namespace ShardPipe.Actors.Serialization;

/// <summary>
/// Akka.Remote's serializer for its miscellaneous messages (Identify, ActorIdentity, remote-watch heartbeats, …),
/// except that <c>PoisonPill</c> and <c>Kill</c> are refused when they arrive from the wire: no peer — member or not —
/// may stop a ShardPipe actor (Akka.NET's untrusted mode does not drop them). Nothing in ShardPipe sends them across
/// nodes; a refused message is logged and dropped by Akka.Remote. Installed in reference.conf as <c>akka-misc</c>,
/// under Akka's identifier for it.
/// </summary>
public sealed class GuardedMiscSerializer : SerializerWithStringManifest
{
    private readonly MiscMessageSerializer _inner;
    private readonly ExtendedActorSystem _system;

    public GuardedMiscSerializer(ExtendedActorSystem system) : base(system) => (_inner, _system) = (new MiscMessageSerializer(system), system);

    public override int Identifier => _inner.Identifier;

    public override string Manifest(object o) => _inner.Manifest(o);

    public override byte[] ToBinary(object obj) => _inner.ToBinary(obj);

    public override object FromBinary(byte[] bytes, string manifest)
    {
        if (manifest is not ("PP" or "K")) return _inner.FromBinary(bytes, manifest);
        Diagnostics.NodeDiagnostics.For(_system).Refused();
        throw new System.Runtime.Serialization.SerializationException(
            $"refused {(manifest == "PP" ? "PoisonPill" : "Kill")} from a remote peer: ShardPipe actors are not stopped from the wire");
    }
}
