namespace ShardPipe.Checkpoints.SafeTensors;

/// <summary>A tensor to be written: its name, dtype, shape, and a callback that fills its bytes.</summary>
public sealed record TensorSource(string Name, DType DType, long[] Shape, Action<Span<byte>> Fill)
{
    public long ByteLength
    {
        get
        {
            long n = DTypes.Size(DType);
            foreach (long d in Shape) n = checked(n * d);
            return n;
        }
    }

    public static TensorSource FromBytes(string name, DType dtype, long[] shape, ReadOnlyMemory<byte> bytes) =>
        new(name, dtype, shape, dst => bytes.Span.CopyTo(dst));
}

/// <summary>
/// Writes one safetensors file exactly as the safetensors library lays it out: tensors sorted by
/// descending dtype rank then name, compact header with '__metadata__' first, padded with spaces to 8 bytes.
/// </summary>
public static class SafeTensorsWriter
{
    public static readonly IReadOnlyDictionary<string, string> PtMetadata = new Dictionary<string, string> { ["format"] = "pt" };

    public static void Write(string path, IEnumerable<TensorSource> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var dup = list.GroupBy(t => t.Name, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new InvalidInputException($"tensor '{dup.Key}' given twice for {path}");
        var ordered = list
            .OrderByDescending(t => DTypes.SafetensorsRank(t.DType))
            .ThenBy(t => t.Name, StringComparer.Ordinal)
            .ToList();
        var infos = new List<TensorInfo>(ordered.Count);
        long offset = 0;
        foreach (var t in ordered)
        {
            long len = t.ByteLength;
            infos.Add(new TensorInfo(t.Name, t.DType, t.Shape, offset, offset + len));
            offset += len;
        }
        byte[] header = SafeTensorsHeader.Serialize(infos, metadata ?? PtMetadata);
        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            fs.SetLength(8 + header.Length + offset);
            fs.Write(BitConverter.GetBytes((ulong)header.Length));
            fs.Write(header);
            var buffer = new byte[1 << 20];
            foreach (var t in ordered)
            {
                long len = t.ByteLength;
                if (len <= buffer.Length)
                {
                    t.Fill(buffer.AsSpan(0, (int)len));
                    fs.Write(buffer, 0, (int)len);
                }
                else
                {
                    var big = GC.AllocateUninitializedArray<byte>(checked((int)len));
                    t.Fill(big);
                    fs.Write(big);
                }
            }
        }
        File.Move(tmp, path, overwrite: true);
    }
}
