using System.Reflection;
using MessagePack;
using MessagePack.Resolvers;

namespace ShardPipe.Messages;

/// <summary>
/// Every cross-node message type under a short, stable manifest, and the MessagePack encoding of each. Only the
/// types in this table can be decoded: no typeless or polymorphic deserialization, and bytes from the wire are
/// read with MessagePack's untrusted-data limits.
/// </summary>
public static class MessageCodec
{
    private static readonly (string Manifest, Type Type)[] Table =
    {
        ("reg", typeof(RegisterWorker)), ("reg-ok", typeof(WorkerRegistered)), ("reg-no", typeof(WorkerRefused)),
        ("hello", typeof(Hello)), ("ping", typeof(Ping)), ("pong", typeof(Pong)),
        ("load", typeof(LoadModel)), ("loaded", typeof(ModelLoaded)), ("load-fail", typeof(LoadFailed)),
        ("status?", typeof(GetStatus)), ("status", typeof(ClusterStatus)), ("unload", typeof(UnloadModel)), ("unloaded", typeof(ModelUnloaded)),
        ("slice", typeof(LoadSlice)), ("slice-ok", typeof(SliceLoaded)), ("slice-fail", typeof(SliceFailed)),
        ("slice-prog", typeof(SliceProgress)), ("slice-rel", typeof(ReleaseSlice)),
        ("read", typeof(ReadTensor)), ("read-hdr", typeof(TensorHeader)), ("read-fail", typeof(ReadFailed)),
        ("bulk-offer", typeof(BulkOffer)),
        ("chunk", typeof(TensorChunk)), ("ack", typeof(ChunkAck)), ("mchunk", typeof(MessageChunk)),
        ("gen", typeof(Generate)), ("fwd", typeof(Forward)), ("stage", typeof(StageInput)), ("stages", typeof(StageBatch)), ("tokens", typeof(TokensGenerated)),
        ("fwd-res", typeof(ForwardResult)), ("gen-done", typeof(GenerationDone)), ("req-fail", typeof(RequestFailed)),
        ("req-rel", typeof(ReleaseRequest)), ("link?", typeof(OpenLink)), ("link-offer", typeof(LinkOffer)),
        ("commit", typeof(ModelCommitted)),
        ("drain", typeof(DrainNode)), ("rebalance", typeof(RebalanceModel)), ("moved", typeof(LayersMoved)), ("move-fail", typeof(MoveFailed)),
        ("drained", typeof(NodeDrained)),
    };

    private static readonly Dictionary<Type, string> ByType = Table.ToDictionary(t => t.Type, t => t.Manifest);
    private static readonly Dictionary<string, Type> ByManifest = Table.ToDictionary(t => t.Manifest, t => t.Type, StringComparer.Ordinal);

    private static readonly MessagePackSerializerOptions Options = MessagePackSerializerOptions.Standard
        .WithResolver(CompositeResolver.Create(new MessagePack.Formatters.IMessagePackFormatter[] { WireBytes.Formatter }, new IFormatterResolver[] { StandardResolver.Instance }))
        .WithSecurity(MessagePackSecurity.UntrustedData);

    public static IReadOnlyCollection<Type> Types => ByType.Keys;

    public static string Manifest(object message) =>
        ByType.TryGetValue(message.GetType(), out var m) ? m
            : throw new ProtocolException($"{message.GetType().Name} is not a ShardPipe wire message (no manifest)");

    /// <summary>The message's frame: exact size, bulk byte fields copied once, straight from their memory.</summary>
    public static byte[] Encode(object message)
    {
        if (!ByType.ContainsKey(message.GetType())) throw new ProtocolException($"{message.GetType().Name} is not a ShardPipe wire message (no manifest)");
        using var frame = new FrameWriter();
        var writer = new MessagePackWriter(frame);
        MessagePackSerializer.Serialize(message.GetType(), ref writer, message, Options);
        writer.Flush();
        return frame.ToArray();
    }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<Type, (PropertyInfo Property, bool Nullable)[]> Fields = new();

    /// <summary>Fields declared non-nullable must not arrive as nil (checked down through nested contracts and arrays).</summary>
    private static void RequireFields(object value, string manifest)
    {
        var type = value.GetType();
        if (type.Namespace != typeof(MessageCodec).Namespace) return;
        var fields = Fields.GetOrAdd(type, t =>
        {
            var nullability = new NullabilityInfoContext(); // not thread-safe: one per computation
            return t.GetProperties(BindingFlags.Public | BindingFlags.Instance)
                .Where(p => p.GetCustomAttribute<KeyAttribute>() is not null)
                .Select(p => (p, p.PropertyType.IsValueType || nullability.Create(p).ReadState == NullabilityState.Nullable)).ToArray();
        });
        foreach (var (property, nullable) in fields)
        {
            var v = property.GetValue(value);
            if (v is null)
            {
                if (!nullable) throw new ProtocolException($"'{manifest}': {type.Name}.{property.Name} is missing");
                continue;
            }
            if (v is Array primitives && primitives.GetType().GetElementType()!.IsPrimitive) continue;
            if (v is Array array2 && array2.GetType().GetElementType() == typeof(string))
            {
                foreach (var item in array2)
                    if (item is null) throw new ProtocolException($"'{manifest}': {type.Name}.{property.Name} holds a nil element");
                continue;
            }
            if (v is Array array)
            {
                foreach (var item in array)
                {
                    if (item is null) throw new ProtocolException($"'{manifest}': {type.Name}.{property.Name} holds a nil element");
                    RequireFields(item, manifest);
                }
            }
            else RequireFields(v, manifest);
        }
    }

    /// <summary>Decodes bytes under a manifest; anything else than a well-formed message of that type is a <see cref="ProtocolException"/>.</summary>
    public static object Decode(byte[] bytes, string manifest)
    {
        if (!ByManifest.TryGetValue(manifest, out var type))
            throw new ProtocolException($"unknown message manifest '{manifest}' ({bytes.Length} bytes dropped)");
        try
        {
            var reader = new MessagePackReader(bytes);
            var value = MessagePackSerializer.Deserialize(type, ref reader, Options)
                        ?? throw new ProtocolException($"'{manifest}': message decoded to null");
            if (reader.Consumed != bytes.Length)
                throw new ProtocolException($"'{manifest}': {bytes.Length - reader.Consumed} trailing bytes after the message");
            RequireFields(value, manifest);
            return value;
        }
        catch (ProtocolException) { throw; }
        catch (Exception ex) when (ex is MessagePackSerializationException or InvalidOperationException or ArgumentException
                                       or OverflowException or EndOfStreamException or FormatException or InvalidCastException
                                       or IndexOutOfRangeException or NullReferenceException or System.Text.DecoderFallbackException)
        {
            throw new ProtocolException($"'{manifest}': malformed {type.Name} ({ex.GetBaseException().Message})", ex);
        }
    }
}
