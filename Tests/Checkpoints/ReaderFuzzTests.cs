using System.Text;
using FsCheck;
using FsCheck.Xunit;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Checkpoints;

/// <summary>Mutated and random bytes fed to the parsers: they return data or a typed error, nothing else.</summary>
public class ReaderFuzzTests
{
    internal static readonly byte[] Valid = MakeValid();
    private static readonly byte[] ValidIndex = File.ReadAllBytes(Path.Combine(TestPaths.Model("gpt2"), "model.safetensors.index.json"));

    private static byte[] MakeValid()
    {
        using var tmp = new TempDir();
        var sources = new[]
        {
            TensorSource.FromBytes("model.embed_tokens.weight", DType.F32, new long[] { 4, 3 }, new byte[48]),
            TensorSource.FromBytes("model.norm.weight", DType.BF16, new long[] { 3 }, new byte[6]),
            TensorSource.FromBytes("ids", DType.I64, new long[] { 2 }, new byte[16]),
            TensorSource.FromBytes("flag", DType.BOOL, new long[] { 1 }, new byte[1]),
        };
        SafeTensorsWriter.Write(tmp.File("v.safetensors"), sources);
        return File.ReadAllBytes(tmp.File("v.safetensors"));
    }

    /// <summary>Parses; on success every tensor's bytes must lie inside the buffer.</summary>
    internal static bool DataOrTypedError(byte[] bytes)
    {
        try
        {
            var h = SafeTensorsHeader.ReadFrom("fuzz.safetensors", bytes);
            foreach (var t in h.Tensors)
            {
                if (h.DataStart + t.End > bytes.Length || t.Begin > t.End) return false;
                _ = bytes.AsSpan((int)(h.DataStart + t.Begin), (int)t.ByteLength).ToArray();
            }
            return true;
        }
        catch (CheckpointFormatException)
        {
            return true;
        }
    }

    [Property(MaxTest = 3000)]
    public bool Mutated_bytes_give_data_or_a_typed_error(int position, byte value, int count)
    {
        var bytes = (byte[])Valid.Clone();
        int headerEnd = 8 + (int)BitConverter.ToUInt64(bytes, 0);
        // Most mutations land in the header, where the parser's decisions are.
        int span = (count & 3) == 0 ? bytes.Length : headerEnd;
        int p = (int)((uint)position % (uint)span);
        int n = 1 + (int)((uint)count % 4);
        for (int i = 0; i < n && p + i < bytes.Length; i++) bytes[p + i] = (byte)(value + i * 17);
        return DataOrTypedError(bytes);
    }

    [Property(MaxTest = 1000)]
    public bool Truncated_files_give_a_typed_error(int cut)
    {
        int len = (int)((uint)cut % (uint)Valid.Length);
        return DataOrTypedError(Valid[..len]);
    }

    [Property(MaxTest = 1000)]
    public bool Random_bytes_give_a_typed_error(byte[] random, ulong headerLength)
    {
        var bytes = new byte[8 + random.Length];
        BitConverter.GetBytes(headerLength % (ulong)(random.Length + 2)).CopyTo(bytes, 0);
        random.CopyTo(bytes, 8);
        return DataOrTypedError(bytes);
    }

    [Property(MaxTest = 1000)]
    public bool Header_token_swaps_give_data_or_a_typed_error(int which, int with)
    {
        // Swap JSON-meaningful tokens so the parser sees structurally plausible but wrong headers.
        string[] tokens = { "\"F32\"", "\"BF16\"", "[4,3]", "[3]", "[0,48]", "[48,54]", "\"shape\"", "\"dtype\"", "\"data_offsets\"", "{", "}", "[", "]", ",", ":", "\"__metadata__\"", "1e400", "-1", "null", "\"\\u0000\"" };
        int headerLen = (int)BitConverter.ToUInt64(Valid, 0);
        string json = Encoding.UTF8.GetString(Valid, 8, headerLen);
        // Only tokens the header holds can be swapped out; every case mutates something.
        var present = tokens.Where(t => json.Contains(t, StringComparison.Ordinal)).ToArray();
        if (present.Length < 10) return false; // the sample header lost the tokens this property is about
        string a = present[(int)((uint)which % (uint)present.Length)];
        string b = tokens[(int)((uint)with % (uint)tokens.Length)];
        int at = json.IndexOf(a, StringComparison.Ordinal);
        string mutated = json[..at] + b + json[(at + a.Length)..];
        var h = Encoding.UTF8.GetBytes(mutated);
        var bytes = new byte[8 + h.Length + (Valid.Length - 8 - headerLen)];
        BitConverter.GetBytes((ulong)h.Length).CopyTo(bytes, 0);
        h.CopyTo(bytes, 8);
        return DataOrTypedError(bytes);
    }

    [Property(MaxTest = 2000)]
    public bool Mutated_indexes_give_data_or_a_typed_error(int position, byte value)
    {
        var bytes = (byte[])ValidIndex.Clone();
        bytes[(int)((uint)position % (uint)bytes.Length)] = value;
        try
        {
            ShardIndex.Parse("model.safetensors.index.json", bytes);
            return true;
        }
        catch (CheckpointFormatException)
        {
            return true;
        }
    }
}
