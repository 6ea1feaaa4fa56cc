using System.Buffers;
using MessagePack;
using MessagePack.Formatters;

namespace ShardPipe.Messages;

/// <summary>
/// How raw byte fields (<see cref="ReadOnlyMemory{T}"/> of bytes: tensor data, chunk data) cross the wire with as
/// few copies as the bytes allow.
/// <list type="bullet">
/// <item>Encoding: a field of at least <see cref="BulkThreshold"/> bytes is not copied into MessagePack's buffers;
/// the formatter writes its header and leaves a hole that <see cref="FrameWriter"/> fills straight from the
/// field's memory (which may be tensor storage) when it builds the final frame: one copy.</item>
/// <item>Decoding: the field becomes a view into the received frame: no copy. Bulk fields are written as
/// MessagePack ext <see cref="ExtType"/> = [pad count][pad][bytes], the pad putting the bytes at a multiple of
/// <see cref="Alignment"/> within the frame, so that a tensor can be built over them in place.</item>
/// </list>
/// Small fields stay plain MessagePack <c>bin</c>; both forms decode.
/// </summary>
public static class WireBytes
{
    public const sbyte ExtType = 17;
    public const int Alignment = 8;
    public const int BulkThreshold = 4096;

    internal static readonly IMessagePackFormatter<ReadOnlyMemory<byte>> Formatter = new BytesFormatter();

    /// <summary>Pad count byte followed by that many zero bytes, for each pad.</summary>
    private static readonly byte[][] Pads = Enumerable.Range(0, Alignment).Select(p => { var b = new byte[1 + p]; b[0] = (byte)p; return b; }).ToArray();

    private sealed class BytesFormatter : IMessagePackFormatter<ReadOnlyMemory<byte>>
    {
        public void Serialize(ref MessagePackWriter writer, ReadOnlyMemory<byte> value, MessagePackSerializerOptions options)
        {
            var frame = FrameWriter.Current;
            if (frame is null || value.Length < BulkThreshold)
            {
                writer.Write(value.Span);
                return;
            }
            // ext header (6 bytes for ext32), then one pad-count byte, then the pad: the data lands aligned.
            writer.Flush();
            long dataAt = frame.Written + 6 + 1;
            int pad = (int)((Alignment - dataAt % Alignment) % Alignment);
            // Always the ext32 form (valid MessagePack, if not the shortest), so that the header's size is known.
            var header = writer.GetSpan(6);
            header[0] = MessagePackCode.Ext32;
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(header[1..], checked((uint)(1 + pad + value.Length)));
            header[5] = unchecked((byte)ExtType);
            writer.Advance(6);
            writer.WriteRaw(Pads[pad]);
            writer.Flush();
            frame.Hole(value);
        }

        public ReadOnlyMemory<byte> Deserialize(ref MessagePackReader reader, MessagePackSerializerOptions options)
        {
            ReadOnlySequence<byte> bytes;
            if (reader.NextMessagePackType == MessagePackType.Extension)
            {
                var header = reader.ReadExtensionFormatHeader();
                if (header.TypeCode != ExtType) throw new ProtocolException($"unexpected MessagePack extension type {header.TypeCode} for a byte field");
                var body = reader.ReadRaw(header.Length);
                if (body.Length < 1) throw new ProtocolException("bulk byte field without its pad count");
                int pad = body.FirstSpan[0];
                if (pad >= Alignment || 1 + pad > body.Length) throw new ProtocolException($"bulk byte field with a bad pad of {pad}");
                bytes = body.Slice(1 + pad);
            }
            else
            {
                bytes = reader.ReadBytes() ?? throw new ProtocolException("byte field is nil");
            }
            return bytes.IsSingleSegment ? bytes.First : bytes.ToArray(); // single segment: a view, no copy
        }
    }
}

/// <summary>
/// The <see cref="IBufferWriter{T}"/> behind <see cref="MessageCodec.Encode"/>: small MessagePack output goes to
/// pooled segments, bulk fields are holes filled from their own memory when <see cref="ToArray"/> builds the one
/// exact-size frame.
/// </summary>
internal sealed class FrameWriter : IBufferWriter<byte>, IDisposable
{
    [ThreadStatic] private static FrameWriter? _current;
    public static FrameWriter? Current => _current;

    private readonly List<(byte[]? Pooled, int Length, ReadOnlyMemory<byte> Hole)> _parts = new();
    private byte[] _buffer;
    private int _used;
    private readonly FrameWriter? _outer;

    public FrameWriter()
    {
        _buffer = ArrayPool<byte>.Shared.Rent(4096);
        _outer = _current;
        _current = this;
    }

    public long Written { get; private set; }

    public void Advance(int count)
    {
        _used += count;
        Written += count;
    }

    public Memory<byte> GetMemory(int sizeHint = 0)
    {
        Ensure(sizeHint);
        return _buffer.AsMemory(_used);
    }

    public Span<byte> GetSpan(int sizeHint = 0)
    {
        Ensure(sizeHint);
        return _buffer.AsSpan(_used);
    }

    private void Ensure(int sizeHint)
    {
        if (_buffer.Length - _used >= Math.Max(sizeHint, 1)) return;
        Seal();
        _buffer = ArrayPool<byte>.Shared.Rent(Math.Max(sizeHint, 64 * 1024));
    }

    private void Seal()
    {
        if (_used > 0) _parts.Add((_buffer, _used, default));
        else ArrayPool<byte>.Shared.Return(_buffer);
        _used = 0;
        _buffer = Array.Empty<byte>();
    }

    /// <summary>Bytes that go next in the frame, copied from their own memory only when the frame is built.</summary>
    public void Hole(ReadOnlyMemory<byte> bytes)
    {
        Seal();
        _buffer = ArrayPool<byte>.Shared.Rent(4096);
        _parts.Add((null, bytes.Length, bytes));
        Written += bytes.Length;
    }

    public byte[] ToArray()
    {
        Seal();
        var frame = GC.AllocateUninitializedArray<byte>(checked((int)Written));
        int at = 0;
        foreach (var (pooled, length, hole) in _parts)
        {
            if (pooled is not null) pooled.AsSpan(0, length).CopyTo(frame.AsSpan(at));
            else hole.Span.CopyTo(frame.AsSpan(at)); // _parts keeps the hole's memory (and its owner) alive meanwhile
            at += length;
        }
        return frame;
    }

    public void Dispose()
    {
        foreach (var (pooled, _, _) in _parts)
            if (pooled is not null) ArrayPool<byte>.Shared.Return(pooled);
        _parts.Clear();
        if (_buffer.Length > 0) ArrayPool<byte>.Shared.Return(_buffer);
        _buffer = Array.Empty<byte>();
        _current = _outer;
    }
}
