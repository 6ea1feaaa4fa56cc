using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;

namespace ShardPipe.Host.Serving;

/// <summary>
/// Which paths need the API key and whether a request presents it (pure): the API (<c>/v1/*</c>, <c>/tokenize</c>,
/// <c>/detokenize</c>) always, <c>/status</c>, <c>/metrics</c> and the dashboard only when protected; <c>/health</c>
/// never (probes). The key is compared in constant time.
/// </summary>
public static class ServeAccess
{
    public static bool NeedsKey(PathString path, bool protectStatus)
    {
        string p = path.Value ?? "/";
        if (p.Equals("/health", StringComparison.OrdinalIgnoreCase)) return false;
        if (p.StartsWith("/v1/", StringComparison.OrdinalIgnoreCase) || p.Equals("/v1", StringComparison.OrdinalIgnoreCase)
            || p.Equals("/tokenize", StringComparison.OrdinalIgnoreCase) || p.Equals("/detokenize", StringComparison.OrdinalIgnoreCase))
            return true;
        return protectStatus;
    }

    /// <summary>True when the Authorization header is <c>Bearer KEY</c> for this key.</summary>
    public static bool Presents(string? authorization, string key)
    {
        const string scheme = "Bearer ";
        if (authorization is null || !authorization.StartsWith(scheme, StringComparison.OrdinalIgnoreCase)) return false;
        var given = Encoding.UTF8.GetBytes(authorization[scheme.Length..].Trim());
        var expected = Encoding.UTF8.GetBytes(key);
        return CryptographicOperations.FixedTimeEquals(SHA256.HashData(given), SHA256.HashData(expected));
    }
}
