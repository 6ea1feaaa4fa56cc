using System.Reflection;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using MessagePack;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;

namespace ShardPipe.Tests.Messages;

/// <summary>Every wire message round-trips; hostile bytes only ever give a <see cref="ProtocolException"/>.</summary>
public class MessageCodecTests
{
    /// <summary>A random instance of a message type, built through its constructor from random field values.</summary>
    internal static object Build(Type type, System.Random rng, int depth = 0)
    {
        if (type == typeof(string)) return new string(Enumerable.Range(0, rng.Next(0, 12)).Select(_ => (char)rng.Next(32, 0x3000)).ToArray());
        if (type == typeof(int)) return rng.Next(int.MinValue, int.MaxValue);
        if (type == typeof(long)) return rng.NextInt64(long.MinValue, long.MaxValue);
        if (type == typeof(uint)) return (uint)rng.NextInt64(0, uint.MaxValue);
        if (type == typeof(double)) return rng.NextDouble() * 1e6 - 5e5;
        if (type == typeof(float)) return (float)rng.NextDouble();
        if (type == typeof(bool)) return rng.Next(2) == 1;
        if (type.IsEnum) { var values = Enum.GetValues(type); return values.GetValue(rng.Next(values.Length))!; }
        if (type == typeof(byte[])) { var b = new byte[rng.Next(0, 300)]; rng.NextBytes(b); return b; }
        if (type == typeof(ReadOnlyMemory<byte>)) // sometimes past the bulk threshold, so both encodings are covered
        {
            var b = new byte[rng.Next(4) == 0 ? rng.Next(WireBytes.BulkThreshold, 3 * WireBytes.BulkThreshold) : rng.Next(0, 300)];
            rng.NextBytes(b);
            return new ReadOnlyMemory<byte>(b);
        }
        if (type.IsArray)
        {
            var elem = type.GetElementType()!;
            var arr = Array.CreateInstance(elem, depth > 2 ? 0 : rng.Next(0, 4));
            for (int i = 0; i < arr.Length; i++) arr.SetValue(Build(elem, rng, depth + 1), i);
            return arr;
        }
        var ctor = type.GetConstructors().OrderByDescending(c => c.GetParameters().Length).First();
        var args = ctor.GetParameters().Select(p =>
        {
            var underlying = Nullable.GetUnderlyingType(p.ParameterType) ?? p.ParameterType;
            bool nullable = !p.ParameterType.IsValueType && new NullabilityInfoContext().Create(p).WriteState == NullabilityState.Nullable;
            return nullable && rng.Next(3) == 0 ? null : Build(underlying, rng, depth + 1);
        }).ToArray();
        return ctor.Invoke(args);
    }

    private static string Dump(object o) => MessagePackSerializer.SerializeToJson(MessagePackSerializer.Serialize(o.GetType(), o));

    public static TheoryData<string> MessageTypes()
    {
        var d = new TheoryData<string>();
        foreach (var t in MessageCodec.Types.OrderBy(t => t.Name)) d.Add(t.Name);
        return d;
    }

    [Theory]
    [MemberData(nameof(MessageTypes))]
    public void Every_message_type_round_trips(string typeName)
    {
        var type = MessageCodec.Types.Single(t => t.Name == typeName);
        var rng = new System.Random(typeName.GetHashCode(StringComparison.Ordinal));
        for (int i = 0; i < 200; i++)
        {
            var message = Build(type, rng);
            var bytes = MessageCodec.Encode(message);
            var back = MessageCodec.Decode(bytes, MessageCodec.Manifest(message));
            Assert.Equal(type, back.GetType());
            Assert.Equal(Dump(message), Dump(back));
        }
    }

    [Property(MaxTest = 3000)]
    public bool Random_bytes_under_any_manifest_give_a_typed_error_or_a_message(byte[] bytes, int pick)
    {
        var manifests = MessageCodec.Types.Select(t => MessageCodec.Manifest(Build(t, new System.Random(1)))).ToList();
        string manifest = manifests[(int)((uint)pick % manifests.Count)];
        try
        {
            var m = MessageCodec.Decode(bytes, manifest);
            return m is IShardPipeMessage;
        }
        catch (ProtocolException)
        {
            return true;
        }
    }

    [Property(MaxTest = 3000)]
    public bool Truncated_and_mutated_messages_give_a_typed_error_or_a_message(int pick, int cut, byte flip, int at)
    {
        var types = MessageCodec.Types.OrderBy(t => t.Name).ToList();
        var type = types[(int)((uint)pick % types.Count)];
        var message = Build(type, new System.Random(pick));
        var bytes = MessageCodec.Encode(message);
        var mutated = bytes[..(int)((uint)cut % (bytes.Length + 1))];
        if (mutated.Length > 0) mutated[(int)((uint)at % mutated.Length)] ^= flip;
        try
        {
            MessageCodec.Decode(mutated, MessageCodec.Manifest(message));
            return true;
        }
        catch (ProtocolException)
        {
            return true;
        }
    }

    [Fact]
    public void An_unknown_manifest_is_a_protocol_error_naming_it()
    {
        var ex = Assert.Throws<ProtocolException>(() => MessageCodec.Decode(new byte[] { 0x90 }, "Akka.Actor.PoisonPill"));
        Assert.Contains("Akka.Actor.PoisonPill", ex.Message);
        Assert.Throws<ProtocolException>(() => MessageCodec.Encode("not a message"));
    }

    [Fact]
    public void Missing_required_fields_are_refused()
    {
        // A LoadModel whose non-nullable Model field arrives as nil.
        var bytes = MessagePackSerializer.Serialize(new object?[] { "id", null, null, null, "balanced", null, null });
        var ex = Assert.Throws<ProtocolException>(() => MessageCodec.Decode(bytes, "load"));
        Assert.Contains("Model", ex.Message);
    }

    [Fact]
    public void Large_messages_split_into_checked_chunks_and_reassemble()
    {
        var payload = new TensorPayload("F32", new long[] { 1, 48, 1024 }, Enumerable.Range(0, 48 * 1024 * 4).Select(i => (byte)i).ToArray());
        var input = new StageInput("r", 0, 1, payload, null, new[] { new long[] { 1, 1 } }, new[] { new long[] { 0, 1 } }, "path",
            new GenerationState(1, false, Array.Empty<long>(), 0, new[] { false }, new SamplingSettings(true, 0, 0, 1, 0)), 1, null);
        var parts = Chunking.Split(input).ToList();
        Assert.True(parts.Count > 3);
        Assert.All(parts, p => Assert.True(MessageCodec.Encode(p).Length < Protocol.MaxChunkBytes + 256));
        var assembler = new ChunkAssembler();
        object? whole = null;
        foreach (MessageChunk c in parts) whole = assembler.Add(c);
        Assert.Equal(Dump(input), Dump(whole!));
        var small = input with { Hidden = null };
        Assert.Same(small, Chunking.Split(small).Single()); // a message under the chunk size travels as itself

        var corrupt = (MessageChunk)parts[1];
        var fresh = new ChunkAssembler();
        fresh.Add((MessageChunk)parts[0]);
        Assert.Throws<ProtocolException>(() => fresh.Add(corrupt with { Data = corrupt.Data.ToArray().Reverse().ToArray() }));
        Assert.Throws<ProtocolException>(() => new ChunkAssembler().Add((MessageChunk)parts[2])); // no first chunk
    }

    [Theory]
    [InlineData(-1, 0, 10, "claims -1 chunks")]
    [InlineData(1_000_000_000, 0, 10, "claims 1000000000 chunks")]
    [InlineData(3, 3, 10, "sequence outside")]
    [InlineData(3, -2, 10, "sequence outside")]
    [InlineData(3, 0, Protocol.MaxChunkBytes + 1, "carries")]
    public void Hostile_chunks_are_refused_before_anything_is_allocated(int count, int sequence, int bytes, string expect)
    {
        var data = new byte[bytes];
        var chunk = new MessageChunk("t", sequence, count, "stage", System.IO.Hashing.Crc32.HashToUInt32(data), data);
        Assert.Contains(expect, Assert.Throws<ProtocolException>(() => new ChunkAssembler().Add(chunk)).Message);
    }

    [Fact]
    public void A_transfer_keeps_its_chunk_count_and_unfinished_transfers_are_capped()
    {
        var data = new byte[1000];
        uint crc = System.IO.Hashing.Crc32.HashToUInt32(data);
        var assembler = new ChunkAssembler(maxMessageBytes: 1L << 20, maxOpenBytes: 2500);
        Assert.Null(assembler.Add(new MessageChunk("a", 0, 3, "stage", crc, data)));
        Assert.Contains("began with 3", Assert.Throws<ProtocolException>(() => assembler.Add(new MessageChunk("a", 1, 4, "stage", crc, data))).Message);
        Assert.Null(assembler.Add(new MessageChunk("b", 0, 3, "stage", crc, data)));
        Assert.Null(assembler.Add(new MessageChunk("c", 0, 3, "stage", crc, data)));
        Assert.Contains("would hold more than 2500", Assert.Throws<ProtocolException>(() => assembler.Add(new MessageChunk("d", 0, 3, "stage", crc, data))).Message);
        Assert.Equal(2, assembler.DropStale(TimeSpan.Zero)); // b and c; a and d were dropped when refused
    }
}
