using ShardPipe.Host.Bench.Gguf;

namespace ShardPipe.Tests.Host.Gguf;

/// <summary>Q8_0 and Q4_0 blocks against blocks worked out by hand from ggml's reference quantizers' rules.</summary>
public class GgmlBlocksTests
{
    private static float[] Block(params (int Index, float Value)[] values)
    {
        var x = new float[32];
        foreach (var (i, v) in values) x[i] = v;
        return x;
    }

    [Fact]
    public void Q8_0_scale_is_absmax_over_127_and_values_round_half_away_from_zero()
    {
        // absmax 63.5 → d = 0.5 (fp16 0x3800); 63.5/0.5 = 127; −31.75/0.5 = −63.5 → −64; 0.25/0.5 = 0.5 → 1; −0.24/0.5 → 0.
        var block = new byte[GgmlBlocks.Q8_0BlockBytes];
        GgmlBlocks.Q8_0Block(Block((0, 63.5f), (1, -31.75f), (2, 0.25f), (3, -0.24f), (31, -2f)), block);
        var expected = new byte[34];
        expected[0] = 0x00; expected[1] = 0x38;
        expected[2] = 0x7F; expected[3] = 0xC0; expected[4] = 0x01; expected[5] = 0x00; expected[33] = unchecked((byte)-4);
        Assert.Equal(expected, block);
    }

    [Fact]
    public void Q4_0_scale_is_the_signed_max_over_minus_8_and_nibbles_pair_value_j_with_j_plus_16()
    {
        // The largest magnitude is −8 → d = 1 (fp16 0x3C00); q = min(15, trunc(x + 8.5)).
        var block = new byte[GgmlBlocks.Q4_0BlockBytes];
        GgmlBlocks.Q4_0Block(Block((0, -8f), (1, 7f), (2, 7.6f), (3, -0.6f), (16, 3f), (17, -3.5f)), block);
        var expected = Enumerable.Repeat((byte)0x88, 18).ToArray();
        expected[0] = 0x00; expected[1] = 0x3C;
        expected[2] = 0xB0;  // value 0 → 0 (low), value 16: 3 + 8.5 → 11 (high)
        expected[3] = 0x5F;  // value 1: 15, value 17: −3.5 + 8.5 → 5
        expected[4] = 0x8F;  // value 2: 16.1 → clamped to 15
        expected[5] = 0x87;  // value 3: 7.9 → 7
        Assert.Equal(expected, block);
    }

    [Fact]
    public void Q4_0_with_a_positive_max_gets_a_negative_scale()
    {
        // max 4 → d = −0.5 (fp16 0xB800), 1/d = −2: 4 → 0.5 → 0; −4 → 16.5 → 15; 1 → 6.5 → 6; zeros → 8.
        var block = new byte[GgmlBlocks.Q4_0BlockBytes];
        GgmlBlocks.Q4_0Block(Block((0, 4f), (1, -4f), (2, 1f)), block);
        var expected = Enumerable.Repeat((byte)0x88, 18).ToArray();
        expected[0] = 0x00; expected[1] = 0xB8;
        expected[2] = 0x80; expected[3] = 0x8F; expected[4] = 0x86;
        Assert.Equal(expected, block);
        Assert.Equal(new[] { 4f, -3.5f, 1f }, GgmlBlocks.Dequantize(GgmlType.Q4_0, block).Take(3));
    }

    [Fact]
    public void An_all_zero_block_has_scale_zero_negative_zero_in_q4_0()
    {
        var q8 = new byte[GgmlBlocks.Q8_0BlockBytes];
        GgmlBlocks.Q8_0Block(new float[32], q8);
        Assert.All(q8, b => Assert.Equal(0, b));
        var q4 = new byte[GgmlBlocks.Q4_0BlockBytes];
        GgmlBlocks.Q4_0Block(new float[32], q4);
        // ggml's d = max / −8 is −0 here: fp16 0x8000, as the reference quantizer writes it.
        Assert.Equal(new byte[] { 0x00, 0x80 }.Concat(Enumerable.Repeat((byte)0x88, 16)), q4);
    }

    [Fact]
    public void Rows_encode_block_after_block_and_sizes_follow_the_types()
    {
        var row = Enumerable.Range(0, 64).Select(i => (i - 32) / 8f).ToArray();
        Assert.Equal(68, GgmlBlocks.RowBytes(GgmlType.Q8_0, 64));
        Assert.Equal(36, GgmlBlocks.RowBytes(GgmlType.Q4_0, 64));
        Assert.Equal(128, GgmlBlocks.RowBytes(GgmlType.F16, 64));
        var bytes = new byte[68];
        GgmlBlocks.Encode(GgmlType.Q8_0, row, bytes);
        var second = new byte[34];
        GgmlBlocks.Q8_0Block(row.AsSpan(32, 32), second);
        Assert.Equal(second, bytes[34..]);
        // Q8_0 round-trips within half a step of its scale.
        var back = GgmlBlocks.Dequantize(GgmlType.Q8_0, bytes.AsSpan(0, 34));
        Assert.All(Enumerable.Range(0, 32), j => Assert.InRange(Math.Abs(back[j] - row[j]), 0, 4f / 127 / 2 + 4e-3));
        Assert.Throws<InvalidInputException>(() => GgmlBlocks.RowBytes(GgmlType.Q4_0, 48));
    }

    [Fact]
    public void Rotary_rows_interleave_the_two_halves_of_each_head()
    {
        // 2 heads of 4 rows, 1 column: per head, half i position j moves to row 2j + i.
        var w = Enumerable.Range(0, 8).Select(i => (float)i).ToArray();
        Assert.Equal(new float[] { 0, 2, 1, 3, 4, 6, 5, 7 }, GgufWriter.RotaryRows(w, heads: 2, headDim: 4, columns: 1));
        var two = Enumerable.Range(0, 8).Select(i => (float)i).ToArray(); // 1 head of 4 rows, 2 columns
        Assert.Equal(new float[] { 0, 1, 4, 5, 2, 3, 6, 7 }, GgufWriter.RotaryRows(two, heads: 1, headDim: 4, columns: 2));
    }
}
