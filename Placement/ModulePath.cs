namespace ShardPipe.Placement;

/// <summary>
/// The one rule for module paths, as PyTorch's dotted names work: a prefix covers a key when it is the whole
/// model (""), the key itself, or an ancestor of it (<c>model.layers.1</c> covers <c>model.layers.1.mlp.up_proj.weight</c>
/// but not <c>model.layers.10</c>); a key's device is its closest listed ancestor's.
/// </summary>
public static class ModulePath
{
    public static bool Covers(string prefix, string key) =>
        prefix.Length == 0 || (key.StartsWith(prefix, StringComparison.Ordinal) && (key.Length == prefix.Length || key[prefix.Length] == '.'));

    /// <summary>Whether any of <paramref name="prefixes"/> covers <paramref name="key"/>.</summary>
    public static bool CoveredByAny(IEnumerable<string> prefixes, string key) => prefixes.Any(p => Covers(p, key));

    /// <summary>The module that owns a tensor: everything before the last dot ("" for a top-level tensor).</summary>
    public static string Parent(string key)
    {
        int dot = key.LastIndexOf('.');
        return dot < 0 ? "" : key[..dot];
    }

    /// <summary>The value of the longest entry that covers <paramref name="key"/>; default when none does.</summary>
    public static T? Closest<T>(IEnumerable<KeyValuePair<string, T>> entries, string key)
    {
        T? best = default;
        int bestLength = -1;
        foreach (var (prefix, value) in entries)
            if (prefix.Length > bestLength && Covers(prefix, key))
            {
                best = value;
                bestLength = prefix.Length;
            }
        return best;
    }
}
