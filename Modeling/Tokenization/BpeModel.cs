namespace ShardPipe.Modeling.Tokenization;

/// <summary>
/// A byte-pair-encoding model as Hugging Face's <c>tokenizers</c> runs it: a word starts as characters (unknown ones
/// as <c>&lt;0xXX&gt;</c> byte tokens with <c>byte_fallback</c>, else the unknown token, fused with <c>fuse_unk</c>),
/// then the pair with the lowest merge rank is merged first (the leftmost on a tie) until none applies.
/// <c>ignore_merges</c> takes a word that is itself in the vocabulary as one token.
/// </summary>
public sealed class BpeModel
{
    public IReadOnlyDictionary<string, int> Vocab => _vocab;
    private readonly Dictionary<string, int> _vocab;
    private readonly string?[] _tokens;
    private readonly Dictionary<(int, int), (int Rank, int NewId)> _merges = new();
    private readonly string? _unk;
    private readonly bool _byteFallback, _fuseUnk, _ignoreMerges;
    private readonly string? _prefix, _suffix;

    public BpeModel(IReadOnlyDictionary<string, int> vocab, IReadOnlyList<(string A, string B)> merges, string? unkToken = null,
        bool byteFallback = false, bool fuseUnk = false, bool ignoreMerges = false, string? continuingSubwordPrefix = null, string? endOfWordSuffix = null, string source = "tokenizer")
    {
        // Big vocabularies (262k tokens, 515k merges) load in well under a second: the caller's dictionary is kept when
        // it is already ordinal, tokens by id are an array, and merged tokens are looked up without building strings.
        _vocab = vocab is Dictionary<string, int> d && d.Comparer == StringComparer.Ordinal ? d : new Dictionary<string, int>(vocab, StringComparer.Ordinal);
        int maxId = _vocab.Count == 0 ? -1 : _vocab.Values.Max();
        _tokens = new string?[maxId + 1];
        foreach (var (t, id) in _vocab) if (id >= 0) _tokens[id] ??= t;
        _unk = unkToken;
        _byteFallback = byteFallback;
        _fuseUnk = fuseUnk;
        _ignoreMerges = ignoreMerges;
        _prefix = continuingSubwordPrefix;
        _suffix = endOfWordSuffix;
        _merges.EnsureCapacity(merges.Count);
        var lookup = _vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        char[] buffer = new char[256];
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (a, b) = merges[rank];
            ReadOnlySpan<char> tail = _prefix is not null && b.StartsWith(_prefix, StringComparison.Ordinal) ? b.AsSpan(_prefix.Length) : b.AsSpan();
            if (buffer.Length < a.Length + tail.Length) buffer = new char[(a.Length + tail.Length) * 2];
            a.AsSpan().CopyTo(buffer);
            tail.CopyTo(buffer.AsSpan(a.Length));
            if (!_vocab.TryGetValue(a, out int ia) || !_vocab.TryGetValue(b, out int ib) || !lookup.TryGetValue(buffer.AsSpan(0, a.Length + tail.Length), out int im))
                throw new CheckpointFormatException(source, null, $"merge {rank} ('{a}' '{b}') names a token that is not in the vocabulary");
            _merges.TryAdd((ia, ib), (rank, im));
        }
    }

    public string? IdToToken(int id) => id >= 0 && id < _tokens.Length ? _tokens[id] : null;
    public int? TokenToId(string token) => _vocab.TryGetValue(token, out int id) ? id : null;

    /// <summary>The tokens of one pre-tokenized word.</summary>
    public List<(string Token, int Id)> Tokenize(string word)
    {
        if (word.Length == 0) return new();
        if (_ignoreMerges && _vocab.TryGetValue(word, out int whole)) return new() { (word, whole) };
        var ids = new List<int>();
        int? unkId = _unk is not null && _vocab.TryGetValue(_unk, out int u) ? u : null;
        bool pendingUnk = false;
        for (int i = 0; i < word.Length;)
        {
            int n = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            string s = word.Substring(i, n);
            if (i > 0 && _prefix is not null) s = _prefix + s;
            if (i + n == word.Length && _suffix is not null) s += _suffix;
            i += n;
            if (_vocab.TryGetValue(s, out int id))
            {
                if (pendingUnk) ids.Add(unkId!.Value);
                pendingUnk = false;
                ids.Add(id);
                continue;
            }
            if (_byteFallback)
            {
                var bytes = System.Text.Encoding.UTF8.GetBytes(word.Substring(i - n, n));
                var byteIds = bytes.Select(b => _vocab.TryGetValue($"<0x{b:X2}>", out int bid) ? bid : -1).ToList();
                if (byteIds.All(b => b >= 0))
                {
                    if (pendingUnk) ids.Add(unkId!.Value);
                    pendingUnk = false;
                    ids.AddRange(byteIds);
                    continue;
                }
            }
            if (unkId is null) continue; // no unknown token: the character is dropped, as tokenizers does
            if (pendingUnk && !_fuseUnk) ids.Add(unkId.Value);
            pendingUnk = true;
        }
        if (pendingUnk) ids.Add(unkId!.Value);
        Merge(ids);
        return ids.Select(id => (_tokens[id]!, id)).ToList();
    }

    /// <summary>Merges pairs lowest rank first (leftmost on a tie) until no pair of neighbours has a merge.</summary>
    private void Merge(List<int> ids)
    {
        int n = ids.Count;
        if (n < 2) return;
        var sym = ids.ToArray();
        var alive = Enumerable.Repeat(true, n).ToArray();
        var prev = Enumerable.Range(-1, n).ToArray();
        var next = Enumerable.Range(1, n).Select(i => i < n ? i : -1).ToArray();
        var queue = new PriorityQueue<(int Pos, int NewId), (int Rank, int Pos)>();
        void Consider(int pos)
        {
            if (pos < 0 || next[pos] < 0) return;
            if (_merges.TryGetValue((sym[pos], sym[next[pos]]), out var m)) queue.Enqueue((pos, m.NewId), (m.Rank, pos));
        }
        for (int i = 0; i < n - 1; i++) Consider(i);
        while (queue.TryDequeue(out var top, out _))
        {
            int pos = top.Pos;
            if (!alive[pos] || next[pos] < 0) continue;
            int right = next[pos];
            if (!_merges.TryGetValue((sym[pos], sym[right]), out var m) || m.NewId != top.NewId) continue; // stale
            sym[pos] = m.NewId;
            alive[right] = false;
            next[pos] = next[right];
            if (next[right] >= 0) prev[next[right]] = pos;
            Consider(prev[pos]);
            Consider(pos);
        }
        ids.Clear();
        for (int i = 0; i >= 0; i = next[i]) ids.Add(sym[i]);
    }
}
