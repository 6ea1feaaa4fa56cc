using System.Globalization;

namespace ShardPipe.Checkpoints;

/// <summary>
/// Size strings as Hugging Face and Accelerate read them (<c>convert_file_size_to_int</c>): "5GiB" = 5×2^30,
/// "5GB" = 5×10^9, "500MB", "10KiB", a trailing lowercase "b" means bits, and plain integers are bytes.
/// </summary>
public static class ByteSize
{
    public static long Parse(string text)
    {
        if (!TryParse(text, out long bytes))
            throw new InvalidInputException($"'{text}' is not a size: use an integer number of bytes or e.g. \"5GB\", \"500MiB\", \"10KB\"");
        return bytes;
    }

    public static bool TryParse(string? text, out long bytes)
    {
        bytes = 0;
        if (string.IsNullOrWhiteSpace(text)) return false;
        string s = text.Trim();
        if (long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out bytes)) return bytes >= 0;
        (string suffix, double factor)[] units =
        {
            ("GIB", 1L << 30), ("MIB", 1L << 20), ("KIB", 1L << 10), ("TIB", 1L << 40),
            ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("TB", 1e12),
        };
        string upper = s.ToUpperInvariant();
        foreach (var (suffix, factor) in units)
        {
            if (!upper.EndsWith(suffix, StringComparison.Ordinal)) continue;
            string number = s[..^suffix.Length].Trim();
            if (!double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double value))
                return false;
            double result = value * factor;
            // A trailing lowercase 'b' means bits, as in HF ("5Mb" = 5×10^6 / 8 bytes).
            if (s.EndsWith('b')) result /= 8;
            if (result > long.MaxValue || result < 0) return false;
            bytes = (long)result;
            return true;
        }
        return false;
    }

    /// <summary>Human-readable size for tables and logs ("1.50 GiB").</summary>
    public static string Format(long bytes)
    {
        string[] units = { "B", "KiB", "MiB", "GiB", "TiB" };
        double v = bytes;
        int u = 0;
        while (Math.Abs(v) >= 1024 && u < units.Length - 1) { v /= 1024; u++; }
        return u == 0 ? $"{bytes} B" : string.Create(CultureInfo.InvariantCulture, $"{v:0.00} {units[u]}");
    }
}
