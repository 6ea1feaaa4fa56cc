using System.Text;
using System.Text.Json;

namespace ShardPipe.Checkpoints.SafeTensors;

/// <summary>
/// A parsed, validated safetensors header. Checks run in order and stop at the first fault, with checked
/// arithmetic, the way the safetensors library validates: length, JSON, entries, dtypes, sizes, offsets.
/// </summary>
public sealed class SafeTensorsHeader
{
    /// <summary>Largest header accepted (the safetensors library's own limit).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    public IReadOnlyList<TensorInfo> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>Offset of the data section from the start of the file (8 + header length).</summary>
    public long DataStart { get; }

    private readonly Dictionary<string, TensorInfo> _byName;

    private SafeTensorsHeader(List<TensorInfo> tensors, Dictionary<string, string> metadata, long dataStart)
    {
        Tensors = tensors;
        Metadata = metadata;
        DataStart = dataStart;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    public bool TryGet(string name, out TensorInfo info) => _byName.TryGetValue(name, out info!);

    /// <summary>Reads the 8-byte length prefix; validates it against the file size.</summary>
    public static long ReadHeaderLength(string file, ReadOnlySpan<byte> prefix, long fileLength)
    {
        if (fileLength < 8 || prefix.Length < 8)
            throw new CheckpointFormatException(file, null, $"file is {fileLength} bytes, shorter than the 8-byte header length prefix");
        ulong n = BitConverter.ToUInt64(prefix[..8]);
        if (n > MaxHeaderBytes)
            throw new CheckpointFormatException(file, null, $"header length {n} exceeds the {MaxHeaderBytes}-byte limit");
        if ((long)n > fileLength - 8)
            throw new CheckpointFormatException(file, null, $"header length {n} runs past the end of the file ({fileLength} bytes)");
        return (long)n;
    }

    /// <summary>Parses and validates a whole safetensors file held in memory (length prefix, header, offsets).</summary>
    public static SafeTensorsHeader ReadFrom(string file, ReadOnlySpan<byte> bytes)
    {
        long n = ReadHeaderLength(file, bytes[..Math.Min(8, bytes.Length)], bytes.Length);
        return Parse(file, bytes.Slice(8, (int)n), 8 + n, bytes.Length - 8 - n);
    }

    /// <summary>Parses and validates a header given its JSON bytes and the size of the data section that follows.</summary>
    public static SafeTensorsHeader Parse(string file, ReadOnlySpan<byte> json, long dataStart, long dataLength)
    {
        if (json.Length == 0 || json[0] != (byte)'{')
            throw new CheckpointFormatException(file, null, "header does not start with '{'");
        var tensors = new List<TensorInfo>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 8 });
        try
        {
            Expect(file, null, ref reader, JsonTokenType.StartObject, "header");
            bool sawMetadata = false;
            while (true)
            {
                if (!reader.Read()) throw new CheckpointFormatException(file, null, "header JSON ends early");
                if (reader.TokenType == JsonTokenType.EndObject) break;
                string name = reader.GetString()!;
                if (name == "__metadata__")
                {
                    if (sawMetadata) throw new CheckpointFormatException(file, null, "'__metadata__' appears twice");
                    sawMetadata = true;
                    ReadMetadata(file, ref reader, metadata);
                    continue;
                }
                if (!seen.Add(name)) throw new CheckpointFormatException(file, name, "tensor is listed twice in the header");
                tensors.Add(ReadTensor(file, name, ref reader));
            }
            // Only the space padding the writer adds may follow the JSON object.
            if (reader.Read())
                throw new CheckpointFormatException(file, null, "unexpected bytes after the header's JSON object");
        }
        catch (JsonException ex)
        {
            throw new CheckpointFormatException(file, null, $"header is not valid JSON ({ex.Message})", ex);
        }
        catch (InvalidOperationException ex)
        {
            throw new CheckpointFormatException(file, null, $"header is not valid JSON ({ex.Message})", ex);
        }
        ValidateOffsets(file, tensors, dataLength);
        return new SafeTensorsHeader(tensors, metadata, dataStart);
    }

    private static void Expect(string file, string? tensor, ref Utf8JsonReader reader, JsonTokenType type, string what)
    {
        if (!reader.Read() || reader.TokenType != type)
            throw new CheckpointFormatException(file, tensor, $"{what}: expected {Describe(type)}, found {Describe(reader.TokenType)}");
    }

    private static string Describe(JsonTokenType type) => type switch
    {
        JsonTokenType.StartObject => "an object",
        JsonTokenType.StartArray => "an array",
        JsonTokenType.String => "a string",
        JsonTokenType.Number => "a number",
        JsonTokenType.PropertyName => "a key",
        JsonTokenType.None => "end of header",
        _ => type.ToString(),
    };

    private static void ReadMetadata(string file, ref Utf8JsonReader reader, Dictionary<string, string> metadata)
    {
        Expect(file, null, ref reader, JsonTokenType.StartObject, "'__metadata__'");
        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            string key = reader.GetString()!;
            if (!reader.Read() || reader.TokenType != JsonTokenType.String)
                throw new CheckpointFormatException(file, null, $"'__metadata__' value of '{key}' must be a string");
            if (!metadata.TryAdd(key, reader.GetString()!))
                throw new CheckpointFormatException(file, null, $"'__metadata__' key '{key}' appears twice");
        }
    }

    private static TensorInfo ReadTensor(string file, string name, ref Utf8JsonReader reader)
    {
        Expect(file, name, ref reader, JsonTokenType.StartObject, "entry");
        DType? dtype = null;
        long[]? shape = null;
        long[]? offsets = null;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            string key = reader.GetString()!;
            switch (key)
            {
                case "dtype":
                    if (dtype is not null) throw new CheckpointFormatException(file, name, "'dtype' given twice");
                    Expect(file, name, ref reader, JsonTokenType.String, "'dtype'");
                    string code = reader.GetString()!;
                    if (!DTypes.TryParseCode(code, out var dt))
                        throw new CheckpointFormatException(file, name, $"unknown dtype '{code}'");
                    dtype = dt;
                    break;
                case "shape":
                    if (shape is not null) throw new CheckpointFormatException(file, name, "'shape' given twice");
                    shape = ReadIntArray(file, name, ref reader, "'shape'");
                    break;
                case "data_offsets":
                    if (offsets is not null) throw new CheckpointFormatException(file, name, "'data_offsets' given twice");
                    offsets = ReadIntArray(file, name, ref reader, "'data_offsets'");
                    if (offsets.Length != 2)
                        throw new CheckpointFormatException(file, name, $"'data_offsets' has {offsets.Length} values, expected 2");
                    break;
                default:
                    throw new CheckpointFormatException(file, name, $"unknown field '{key}' in tensor entry");
            }
        }
        if (dtype is null) throw new CheckpointFormatException(file, name, "missing 'dtype'");
        if (shape is null) throw new CheckpointFormatException(file, name, "missing 'shape'");
        if (offsets is null) throw new CheckpointFormatException(file, name, "missing 'data_offsets'");
        if (offsets[1] < offsets[0])
            throw new CheckpointFormatException(file, name, $"data_offsets [{offsets[0]}, {offsets[1]}) end before they begin");
        var info = new TensorInfo(name, dtype.Value, shape, offsets[0], offsets[1]);
        long expected;
        try
        {
            expected = checked(info.ElementCount * DTypes.Size(info.DType));
        }
        catch (OverflowException)
        {
            throw new CheckpointFormatException(file, name, $"shape [{string.Join(", ", shape)}] overflows a 64-bit byte count");
        }
        if (expected != info.ByteLength)
            throw new CheckpointFormatException(file, name,
                $"{info.ByteLength} bytes in data_offsets [{offsets[0]}, {offsets[1]}), but shape [{string.Join(", ", shape)}] of {DTypes.Code(info.DType)} needs {expected}");
        return info;
    }

    private static long[] ReadIntArray(string file, string name, ref Utf8JsonReader reader, string what)
    {
        Expect(file, name, ref reader, JsonTokenType.StartArray, what);
        var values = new List<long>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out long v) || v < 0)
                throw new CheckpointFormatException(file, name, $"{what} must hold non-negative integers");
            values.Add(v);
        }
        return values.ToArray();
    }

    private static void ValidateOffsets(string file, List<TensorInfo> tensors, long dataLength)
    {
        var ordered = tensors.OrderBy(t => t.Begin).ThenBy(t => t.End).ToList();
        long expectedBegin = 0;
        foreach (var t in ordered)
        {
            if (t.Begin < expectedBegin)
                throw new CheckpointFormatException(file, t.Name, $"offsets [{t.Begin}, {t.End}) overlap the previous tensor (which ends at {expectedBegin})");
            if (t.Begin > expectedBegin)
                throw new CheckpointFormatException(file, t.Name, $"offsets [{t.Begin}, {t.End}) leave a gap after {expectedBegin}: tensors must be contiguous");
            expectedBegin = t.End;
        }
        if (expectedBegin != dataLength)
        {
            string? last = ordered.Count > 0 ? ordered[^1].Name : null;
            throw new CheckpointFormatException(file, last, expectedBegin > dataLength
                ? $"offsets run to {expectedBegin}, past the end of the data section ({dataLength} bytes)"
                : $"data section is {dataLength} bytes but tensors cover only {expectedBegin}");
        }
    }

    /// <summary>Header JSON as the safetensors library writes it: compact, '__metadata__' first, then tensors in offset order.</summary>
    public static byte[] Serialize(IReadOnlyList<TensorInfo> tensorsInOffsetOrder, IReadOnlyDictionary<string, string>? metadata)
    {
        var sb = new StringBuilder();
        sb.Append('{');
        bool first = true;
        if (metadata is { Count: > 0 })
        {
            sb.Append("\"__metadata__\":{");
            bool f = true;
            foreach (var (k, v) in metadata)
            {
                if (!f) sb.Append(',');
                f = false;
                JsonText.AppendString(sb, k);
                sb.Append(':');
                JsonText.AppendString(sb, v);
            }
            sb.Append('}');
            first = false;
        }
        foreach (var t in tensorsInOffsetOrder)
        {
            if (!first) sb.Append(',');
            first = false;
            JsonText.AppendString(sb, t.Name);
            sb.Append(":{\"dtype\":\"").Append(DTypes.Code(t.DType)).Append("\",\"shape\":[");
            sb.Append(string.Join(",", t.Shape));
            sb.Append("],\"data_offsets\":[").Append(t.Begin).Append(',').Append(t.End).Append("]}");
        }
        sb.Append('}');
        int len = Encoding.UTF8.GetByteCount(sb.ToString());
        // Pad with spaces to a multiple of 8, as the safetensors library does, so the data section is aligned.
        sb.Append(' ', (8 - len % 8) % 8);
        return Encoding.UTF8.GetBytes(sb.ToString());
    }
}
