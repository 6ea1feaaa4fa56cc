namespace ShardPipe.Host.Bench.Gguf;

/// <summary>The ggml tensor types a GGUF file written here holds (ggml's numbering).</summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q8_0 = 8,
}

/// <summary>
/// Row encodings of ggml's types, as ggml's reference quantizers define them: blocks of 32 values along a row; Q8_0 is an
/// fp16 scale d = absmax / 127 and 32 int8 values round(x / d); Q4_0 is an fp16 scale d = m / −8 (m the value of largest
/// magnitude, sign kept) and 16 bytes of nibbles, the low nibble of byte j holding value j and the high nibble value
/// j + 16, each min(15, trunc(x / d + 8.5)).
/// </summary>
public static class GgmlBlocks
{
    public const int BlockSize = 32;
    public const int Q8_0BlockBytes = 2 + BlockSize;
    public const int Q4_0BlockBytes = 2 + BlockSize / 2;

    public static bool IsQuantized(GgmlType type) => type is GgmlType.Q4_0 or GgmlType.Q8_0;

    /// <summary>Bytes of one row of <paramref name="n"/> values.</summary>
    public static long RowBytes(GgmlType type, long n)
    {
        if (IsQuantized(type) && n % BlockSize != 0)
            throw new InvalidInputException($"a {type} row needs a multiple of {BlockSize} values, not {n}");
        return type switch
        {
            GgmlType.F32 => n * 4,
            GgmlType.F16 => n * 2,
            GgmlType.Q8_0 => n / BlockSize * Q8_0BlockBytes,
            GgmlType.Q4_0 => n / BlockSize * Q4_0BlockBytes,
            _ => throw new UnsupportedException($"ggml type {type}"),
        };
    }

    /// <summary>Encodes one row (or several whole rows) of float32 values into <paramref name="dst"/>.</summary>
    public static void Encode(GgmlType type, ReadOnlySpan<float> x, Span<byte> dst)
    {
        switch (type)
        {
            case GgmlType.F32:
                for (int i = 0; i < x.Length; i++) BitConverter.TryWriteBytes(dst.Slice(i * 4, 4), x[i]);
                break;
            case GgmlType.F16:
                for (int i = 0; i < x.Length; i++) BitConverter.TryWriteBytes(dst.Slice(i * 2, 2), (Half)x[i]);
                break;
            case GgmlType.Q8_0:
                for (int b = 0; b < x.Length / BlockSize; b++) Q8_0Block(x.Slice(b * BlockSize, BlockSize), dst.Slice(b * Q8_0BlockBytes, Q8_0BlockBytes));
                break;
            case GgmlType.Q4_0:
                for (int b = 0; b < x.Length / BlockSize; b++) Q4_0Block(x.Slice(b * BlockSize, BlockSize), dst.Slice(b * Q4_0BlockBytes, Q4_0BlockBytes));
                break;
            default:
                throw new UnsupportedException($"ggml type {type}");
        }
    }

    /// <summary>One Q8_0 block: the fp16 scale, then 32 signed bytes.</summary>
    public static void Q8_0Block(ReadOnlySpan<float> x, Span<byte> block)
    {
        float amax = 0;
        for (int j = 0; j < BlockSize; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
        float d = amax / 127f;
        float id = d != 0 ? 1f / d : 0f;
        BitConverter.TryWriteBytes(block[..2], (Half)d);
        for (int j = 0; j < BlockSize; j++) block[2 + j] = unchecked((byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero));
    }

    /// <summary>One Q4_0 block: the fp16 scale, then 16 bytes of two 4-bit values each (offset by 8).</summary>
    public static void Q4_0Block(ReadOnlySpan<float> x, Span<byte> block)
    {
        float amax = 0, max = 0;
        for (int j = 0; j < BlockSize; j++)
        {
            float v = x[j];
            if (amax < MathF.Abs(v)) { amax = MathF.Abs(v); max = v; }
        }
        float d = max / -8f;
        float id = d != 0 ? 1f / d : 0f;
        BitConverter.TryWriteBytes(block[..2], (Half)d);
        for (int j = 0; j < BlockSize / 2; j++)
        {
            int lo = Math.Min(15, (int)(sbyte)(int)(x[j] * id + 8.5f));
            int hi = Math.Min(15, (int)(sbyte)(int)(x[BlockSize / 2 + j] * id + 8.5f));
            block[2 + j] = (byte)(lo | (hi << 4));
        }
    }

    /// <summary>Decodes a Q4_0 or Q8_0 block back to its 32 values (for tests and checks).</summary>
    public static float[] Dequantize(GgmlType type, ReadOnlySpan<byte> block)
    {
        float d = (float)BitConverter.ToHalf(block[..2]);
        var y = new float[BlockSize];
        for (int j = 0; j < BlockSize; j++)
            y[j] = type switch
            {
                GgmlType.Q8_0 => (sbyte)block[2 + j] * d,
                GgmlType.Q4_0 => ((j < 16 ? block[2 + j] & 0x0F : block[2 + j - 16] >> 4) - 8) * d,
                _ => throw new UnsupportedException($"ggml type {type}"),
            };
        return y;
    }
}
