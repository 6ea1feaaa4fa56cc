using System.Text;

namespace ShardPipe.Modeling.Tokenization;

/// <summary>
/// A SentencePiece <c>tokenizer.model</c> (the protobuf <c>ModelProto</c>) with the library's own encoding and
/// decoding: normalisation as its <c>NormalizerSpec</c> says (identity rules only: a precompiled character map is
/// refused), BPE by piece score or unigram by Viterbi, user-defined symbols kept whole, unknown characters as UTF-8
/// byte pieces when <c>byte_fallback</c> is on, and decoding that drops one leading dummy-prefix space.
/// </summary>
public sealed class SentencePieceModel
{
    public const char Space = '\u2581'; // ▁

    /// <summary>A piece's type, as the proto numbers them.</summary>
    public enum PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

    public sealed record Piece(string Text, float Score, PieceType Type);

    public IReadOnlyList<Piece> Pieces { get; }
    public bool IsBpe { get; }
    public bool ByteFallback { get; }
    public bool AddDummyPrefix { get; }
    public bool RemoveExtraWhitespaces { get; }
    public bool EscapeWhitespaces { get; }
    public int UnkId { get; }
    public string UnkSurface { get; }

    private readonly Dictionary<string, int> _normal = new(StringComparer.Ordinal);   // normal, user-defined, unused
    private readonly Dictionary<string, int> _reserved = new(StringComparer.Ordinal); // control, unknown, byte
    private readonly int[] _byteIds = Enumerable.Repeat(-1, 256).ToArray();
    private readonly List<string> _userDefined = new();
    private readonly float _minScore;

    private SentencePieceModel(List<Piece> pieces, int modelType, bool byteFallback, string unkSurface, bool dummyPrefix, bool removeExtra, bool escape)
    {
        Pieces = pieces;
        IsBpe = modelType == 2;
        ByteFallback = byteFallback;
        UnkSurface = unkSurface;
        AddDummyPrefix = dummyPrefix;
        RemoveExtraWhitespaces = removeExtra;
        EscapeWhitespaces = escape;
        UnkId = -1;
        for (int i = 0; i < pieces.Count; i++)
        {
            var p = pieces[i];
            if (p.Type is PieceType.Normal or PieceType.UserDefined or PieceType.Unused) _normal.TryAdd(p.Text, i);
            else _reserved.TryAdd(p.Text, i);
            if (p.Type == PieceType.UserDefined) _userDefined.Add(p.Text);
            if (p.Type == PieceType.Unknown && UnkId < 0) UnkId = i;
            if (p.Type == PieceType.Byte && p.Text.Length == 6 && p.Text.StartsWith("<0x", StringComparison.Ordinal)
                && int.TryParse(p.Text.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out int b)) _byteIds[b] = i;
        }
        _minScore = pieces.Where(p => p.Type == PieceType.Normal).Select(p => p.Score).DefaultIfEmpty(0).Min();
        _userDefined.Sort((a, b) => b.Length.CompareTo(a.Length)); // longest first
    }

    /// <summary>Reads and checks a <c>tokenizer.model</c>; every fault is a <see cref="CheckpointFormatException"/> naming the file.</summary>
    public static SentencePieceModel Load(string path)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (IOException ex) { throw new CheckpointFormatException(path, null, $"cannot read: {ex.Message}", ex); }
        try { return Parse(bytes, path); }
        catch (ProtoReader.Malformed ex) { throw new CheckpointFormatException(path, null, $"not a SentencePiece model ({ex.Message})"); }
    }

    private static SentencePieceModel Parse(byte[] bytes, string path)
    {
        var pieces = new List<Piece>();
        int modelType = 1;
        bool byteFallback = false, dummyPrefix = true, removeExtra = true, escape = true;
        string unkSurface = " \u2047 ";
        string normalizer = "", charsmapInfo = "";
        var top = new ProtoReader(bytes);
        while (top.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2)
            {
                var p = new ProtoReader(top.Bytes());
                string text = ""; float score = 0; int type = 1;
                while (p.Next(out int f, out int w))
                    if (f == 1 && w == 2) text = Encoding.UTF8.GetString(p.Bytes());
                    else if (f == 2 && w == 5) score = p.Float();
                    else if (f == 3 && w == 0) type = (int)p.Varint();
                    else p.Skip(w);
                if (type is < 1 or > 6) throw new CheckpointFormatException(path, text, $"unknown piece type {type}");
                pieces.Add(new Piece(text, score, (PieceType)type));
            }
            else if (field == 2 && wire == 2)
            {
                var t = new ProtoReader(top.Bytes());
                while (t.Next(out int f, out int w))
                    if (f == 3 && w == 0) modelType = (int)t.Varint();
                    else if (f == 35 && w == 0) byteFallback = t.Varint() != 0;
                    else if (f == 44 && w == 2) unkSurface = Encoding.UTF8.GetString(t.Bytes());
                    else t.Skip(w);
            }
            else if (field == 3 && wire == 2)
            {
                var n = new ProtoReader(top.Bytes());
                while (n.Next(out int f, out int w))
                    if (f == 1 && w == 2) normalizer = Encoding.UTF8.GetString(n.Bytes());
                    else if (f == 2 && w == 2) charsmapInfo = n.Bytes().Length > 0 ? "precompiled" : "";
                    else if (f == 3 && w == 0) dummyPrefix = n.Varint() != 0;
                    else if (f == 4 && w == 0) removeExtra = n.Varint() != 0;
                    else if (f == 5 && w == 0) escape = n.Varint() != 0;
                    else n.Skip(w);
            }
            else top.Skip(wire);
        }
        if (pieces.Count == 0) throw new CheckpointFormatException(path, null, "the model has no pieces");
        if (modelType is not (1 or 2))
            throw new UnsupportedException($"{path}: SentencePiece model type {modelType} is not supported (unigram and BPE are)");
        if (charsmapInfo.Length > 0)
            throw new UnsupportedException($"{path}: SentencePiece normalizer '{normalizer}' uses a precompiled character map, which is not supported (identity normalisation is)");
        var model = new SentencePieceModel(pieces, modelType, byteFallback, unkSurface, dummyPrefix, removeExtra, escape);
        if (model.UnkId < 0) throw new CheckpointFormatException(path, null, "the model has no <unk> piece");
        return model;
    }

    public int PieceToId(string piece) => _reserved.TryGetValue(piece, out int r) ? r : _normal.TryGetValue(piece, out int n) ? n : UnkId;

    public bool IsControl(int id) => Pieces[id].Type == PieceType.Control;
    public bool IsByte(int id) => Pieces[id].Type == PieceType.Byte;

    /// <summary>SentencePiece's normaliser with identity rules: dummy prefix, whitespace escaping, optional collapsing.</summary>
    public string Normalize(string text, bool addDummyPrefix)
    {
        if (text.Length == 0) return "";
        var sb = new StringBuilder(text.Length + 1);
        int i = 0;
        if (RemoveExtraWhitespaces) while (i < text.Length && text[i] == ' ') i++;
        if (i == text.Length) return "";
        if (addDummyPrefix) sb.Append(EscapeWhitespaces ? Space : ' ');
        bool lastSpace = addDummyPrefix;
        for (; i < text.Length; i++)
        {
            char c = text[i];
            if (c == ' ')
            {
                if (RemoveExtraWhitespaces && lastSpace) continue;
                sb.Append(EscapeWhitespaces ? Space : ' ');
                lastSpace = true;
            }
            else
            {
                sb.Append(c);
                lastSpace = false;
            }
        }
        if (RemoveExtraWhitespaces)
            while (sb.Length > 0 && sb[^1] == (EscapeWhitespaces ? Space : ' ')) sb.Length--;
        return sb.ToString();
    }

    /// <summary>Encodes <paramref name="text"/> to (piece, id) pairs, as <c>sp.encode(text, out_type=str)</c>.</summary>
    public List<(string Piece, int Id)> Encode(string text, bool addDummyPrefix = true)
    {
        string normalized = Normalize(text, addDummyPrefix && AddDummyPrefix);
        var pieces = IsBpe ? EncodeBpe(normalized) : EncodeUnigram(normalized);
        var output = new List<(string, int)>(pieces.Count);
        foreach (var (piece, id) in pieces)
        {
            if (id == UnkId && ByteFallback && piece != Pieces[UnkId].Text)
            {
                // An unknown piece becomes its UTF-8 bytes, each a <0xXX> piece.
                foreach (byte b in Encoding.UTF8.GetBytes(piece))
                    output.Add((Pieces[_byteIds[b] >= 0 ? _byteIds[b] : UnkId].Text, _byteIds[b] >= 0 ? _byteIds[b] : UnkId));
            }
            else output.Add((piece, id));
        }
        return output;
    }

    /// <summary>The input split into characters (user-defined symbols kept whole and frozen).</summary>
    private List<(string Text, bool Frozen)> Characters(string s)
    {
        var chars = new List<(string, bool)>();
        for (int i = 0; i < s.Length;)
        {
            string? user = _userDefined.FirstOrDefault(u => string.CompareOrdinal(s, i, u, 0, u.Length) == 0);
            if (user is not null)
            {
                chars.Add((user, true));
                i += user.Length;
                continue;
            }
            int n = char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? 2 : 1;
            chars.Add((s.Substring(i, n), false));
            i += n;
        }
        return chars;
    }

    /// <summary>
    /// SentencePiece's BPE: start from characters, repeatedly merge the adjacent pair whose concatenation is a piece
    /// with the highest score (the leftmost on a tie), then split any unused piece back into what formed it.
    /// </summary>
    private List<(string, int)> EncodeBpe(string normalized)
    {
        var chars = Characters(normalized);
        int n = chars.Count;
        var text = chars.Select(c => c.Text).ToArray();
        var frozen = chars.Select(c => c.Frozen).ToArray();
        var prev = Enumerable.Range(-1, n).ToArray();
        var next = Enumerable.Range(1, n).Select(i => i < n ? i : -1).ToArray();
        var agenda = new PriorityQueue<(int Left, int Right, int Length), (float, int)>(Comparer<(float Score, int Left)>.Create((a, b) =>
            a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Left.CompareTo(b.Left)));
        var revMerge = new Dictionary<string, (string, string)>(StringComparer.Ordinal);
        void MaybeAdd(int left, int right)
        {
            if (left < 0 || right < 0 || frozen[left] || frozen[right]) return;
            string merged = text[left] + text[right];
            if (!_normal.TryGetValue(merged, out int id)) return;
            agenda.Enqueue((left, right, merged.Length), (Pieces[id].Score, left));
            if (Pieces[id].Type == PieceType.Unused) revMerge[merged] = (text[left], text[right]);
        }
        for (int i = 1; i < n; i++) MaybeAdd(i - 1, i);
        while (agenda.TryDequeue(out var top, out _))
        {
            if (text[top.Left].Length == 0 || text[top.Right].Length == 0 || text[top.Left].Length + text[top.Right].Length != top.Length) continue;
            text[top.Left] += text[top.Right];
            next[top.Left] = next[top.Right];
            if (next[top.Right] >= 0) prev[next[top.Right]] = top.Left;
            text[top.Right] = "";
            MaybeAdd(prev[top.Left], top.Left);
            MaybeAdd(top.Left, next[top.Left]);
        }
        var output = new List<(string, int)>();
        void Resegment(string w)
        {
            int id = PieceToId(w);
            if (id != UnkId && Pieces[id].Type == PieceType.Unused && revMerge.TryGetValue(w, out var parts))
            {
                Resegment(parts.Item1);
                Resegment(parts.Item2);
            }
            else output.Add((w, id));
        }
        for (int i = n > 0 ? 0 : -1; i >= 0; i = next[i]) Resegment(text[i]);
        return output;
    }

    /// <summary>SentencePiece's unigram Viterbi: the segmentation with the highest total score; unknown characters as single pieces.</summary>
    private List<(string, int)> EncodeUnigram(string normalized)
    {
        var chars = Characters(normalized);
        int n = chars.Count;
        var best = new float[n + 1];
        var from = new int[n + 1];
        var pieceAt = new int[n + 1];
        for (int i = 1; i <= n; i++) best[i] = float.NegativeInfinity;
        float unkScore = _minScore - 10f; // as sentencepiece: an unknown character scores below every piece
        for (int start = 0; start < n; start++)
        {
            if (float.IsNegativeInfinity(best[start])) continue;
            var sb = new StringBuilder();
            for (int end = start; end < n; end++)
            {
                sb.Append(chars[end].Text);
                if (chars[end].Frozen && end > start) break;
                string candidate = sb.ToString();
                int id = chars[start].Frozen && end == start ? PieceToId(candidate) : _normal.TryGetValue(candidate, out int v) ? v : -1;
                float score = id >= 0 && id != UnkId ? (Pieces[id].Type == PieceType.UserDefined ? 0 : Pieces[id].Score)
                    : end == start ? unkScore : float.NegativeInfinity;
                if (float.IsNegativeInfinity(score)) { if (chars[start].Frozen) break; continue; }
                if (best[start] + score > best[end + 1])
                {
                    best[end + 1] = best[start] + score;
                    from[end + 1] = start;
                    pieceAt[end + 1] = id >= 0 ? id : UnkId;
                }
                if (chars[start].Frozen) break;
            }
        }
        var output = new List<(string, int)>();
        for (int end = n; end > 0; end = from[end])
            output.Add((string.Concat(chars.Skip(from[end]).Take(end - from[end]).Select(c => c.Text)), pieceAt[end]));
        output.Reverse();
        // Consecutive unknown characters are fused into one unknown piece, as sentencepiece does.
        var fused = new List<(string, int)>();
        foreach (var p in output)
            if (fused.Count > 0 && p.Item2 == UnkId && fused[^1].Item2 == UnkId) fused[^1] = (fused[^1].Item1 + p.Item1, UnkId);
            else fused.Add(p);
        return fused;
    }

    /// <summary>
    /// <c>sp.decode(pieces)</c>: control pieces vanish, byte pieces join into UTF-8 (an invalid byte becomes U+FFFD),
    /// ▁ becomes a space, and the first whitespace-led piece loses its leading ▁ (the dummy prefix).
    /// </summary>
    public string Decode(IReadOnlyList<string> pieces)
    {
        var text = new StringBuilder();
        var bytes = new List<byte>();
        bool isBosWs = true, bosWsSeen = false;
        void FlushBytes()
        {
            if (bytes.Count == 0) return;
            text.Append(Utf8.DecodeLossy(bytes));
            bytes.Clear();
        }
        foreach (var piece in pieces)
        {
            int id = PieceToId(piece);
            if (IsByte(id))
            {
                bytes.Add(byte.Parse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber));
                continue;
            }
            FlushBytes();
            if (bosWsSeen || text.Length > 0) isBosWs = false;
            bosWsSeen = false;
            if (IsControl(id)) continue;
            if (id == UnkId)
            {
                text.Append(piece == Pieces[UnkId].Text ? UnkSurface : piece);
                continue;
            }
            string p = piece;
            if (isBosWs && (AddDummyPrefix || RemoveExtraWhitespaces) && p.Length > 0 && p[0] == Space)
            {
                p = p[1..];
                bosWsSeen = !RemoveExtraWhitespaces;
            }
            text.Append(p.Replace(Space, ' '));
        }
        FlushBytes();
        return text.ToString();
    }
}

/// <summary>A minimal protobuf wire-format reader (varint, 32-bit, length-delimited), bounds-checked.</summary>
internal ref struct ProtoReader
{
    public sealed class Malformed(string message) : Exception(message);

    private readonly ReadOnlySpan<byte> _b;
    private int _i;

    public ProtoReader(ReadOnlySpan<byte> bytes)
    {
        _b = bytes;
        _i = 0;
    }

    public bool Next(out int field, out int wire)
    {
        field = wire = 0;
        if (_i >= _b.Length) return false;
        ulong key = Varint();
        field = (int)(key >> 3);
        wire = (int)(key & 7);
        if (field == 0) throw new Malformed($"field number 0 at byte {_i}");
        return true;
    }

    public ulong Varint()
    {
        ulong result = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (_i >= _b.Length) throw new Malformed("truncated varint");
            byte x = _b[_i++];
            result |= (ulong)(x & 0x7f) << shift;
            if (x < 0x80) return result;
        }
        throw new Malformed("varint longer than 10 bytes");
    }

    public float Float()
    {
        if (_i + 4 > _b.Length) throw new Malformed("truncated float");
        float v = System.Buffers.Binary.BinaryPrimitives.ReadSingleLittleEndian(_b[_i..]);
        _i += 4;
        return v;
    }

    public ReadOnlySpan<byte> Bytes()
    {
        ulong len = Varint();
        if (len > (ulong)(_b.Length - _i)) throw new Malformed($"a field of {len} bytes runs past the end");
        var s = _b.Slice(_i, (int)len);
        _i += (int)len;
        return s;
    }

    public void Skip(int wire)
    {
        switch (wire)
        {
            case 0: Varint(); break;
            case 1: if ((_i += 8) > _b.Length) throw new Malformed("truncated fixed64"); break;
            case 2: Bytes(); break;
            case 5: if ((_i += 4) > _b.Length) throw new Malformed("truncated fixed32"); break;
            default: throw new Malformed($"wire type {wire}");
        }
    }
}
