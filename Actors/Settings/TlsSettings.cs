using Akka.Configuration;

namespace ShardPipe.Actors.Settings;

/// <summary>
/// Mutual TLS for a node or a client (<c>shardpipe.tls</c>; defaults in reference.conf): this side's PKCS#12
/// certificate (its password read from the environment variable <see cref="PasswordEnv"/>), and what a peer's
/// certificate must be — issued by <see cref="Ca"/>, and one of <see cref="PinnedThumbprints"/> when any are listed.
/// </summary>
public sealed record TlsSettings(bool Enabled, string Certificate, string PasswordEnv, string Ca, IReadOnlyList<string> PinnedThumbprints, TimeSpan HandshakeTimeout)
{
    public static TlsSettings From(Config config)
    {
        var t = ReferenceConfig.Over(config).GetConfig("shardpipe.tls");
        string certificate = t.GetString("certificate") ?? "";
        var settings = new TlsSettings(EnabledValue(t.GetString("enabled") ?? "auto", certificate), certificate, t.GetString("password-env") ?? "",
            t.GetString("ca") ?? "", t.GetStringList("pinned-thumbprints").Select(p => p.Replace(":", "").ToUpperInvariant()).ToList(),
            t.GetTimeSpan("handshake-timeout"));
        if (!settings.Enabled) return settings;
        if (settings.Certificate.Length == 0)
            throw new ConfigurationException("shardpipe.tls.certificate: TLS is enabled but no certificate (a PKCS#12 file) is given");
        if (settings.Ca.Length == 0 && settings.PinnedThumbprints.Count == 0)
            throw new ConfigurationException("shardpipe.tls: TLS is enabled but neither ca nor pinned-thumbprints says which peers to trust");
        foreach (var p in settings.PinnedThumbprints)
            if (p.Length != 40 || !p.All(Uri.IsHexDigit))
                throw new ConfigurationException($"shardpipe.tls.pinned-thumbprints: '{p}' is not a SHA-1 thumbprint (40 hex digits)");
        if (settings.HandshakeTimeout <= TimeSpan.Zero)
            throw new ConfigurationException("shardpipe.tls.handshake-timeout must be positive");
        return settings;
    }

    /// <summary><c>enabled</c>: <c>auto</c> (the default) is on exactly when a certificate is given.</summary>
    private static bool EnabledValue(string value, string certificate) => value.Trim().ToLowerInvariant() switch
    {
        "auto" => certificate.Length > 0,
        "on" or "true" or "yes" => true,
        "off" or "false" or "no" => false,
        _ => throw new ConfigurationException($"shardpipe.tls.enabled: '{value}' is not auto, on or off"),
    };
}
