using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;

namespace ShardPipe.Actors.Security;

/// <summary>
/// The cluster's own certificate authority, made with .NET's X509 APIs (no openssl): <c>shardpipe cert</c> and the
/// tests and benchmarks that run nodes under TLS use it. A folder holds <c>ca.crt</c> (PEM, what every node and
/// client trusts: <c>shardpipe.tls.ca</c>), <c>ca.p12</c> (the CA's certificate and private key, encrypted with the
/// password; keep it off the nodes) and one <c>NAME.p12</c> per node or client (its certificate and key:
/// <c>shardpipe.tls.certificate</c>). Every key is ECDSA P-256; PKCS#12 files are encrypted with AES-256.
/// </summary>
public static partial class CertificateAuthority
{
    public const string CaCertificateFile = "ca.crt";
    public const string CaKeyFile = "ca.p12";
    private static readonly Oid ServerAuth = new("1.3.6.1.5.5.7.3.1"), ClientAuth = new("1.3.6.1.5.5.7.3.2");

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    private static partial Regex NamePattern();

    /// <summary>Makes a new CA in <paramref name="dir"/>; refuses to overwrite one that is there (its certificates would stop chaining).</summary>
    public static (string CaCertificate, string CaKey) CreateCa(string dir, string password, int days = 825, string commonName = "ShardPipe cluster CA")
    {
        CheckPassword(password);
        CheckDays(days);
        string crt = Path.Combine(dir, CaCertificateFile), key = Path.Combine(dir, CaKeyFile);
        if (File.Exists(crt) || File.Exists(key))
            throw new InvalidInputException($"{dir}: a CA is there already ({CaCertificateFile}/{CaKeyFile}); certificates it issued would no longer chain to a new one — remove them first to start over");
        Directory.CreateDirectory(dir);
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(new X500DistinguishedName($"CN={commonName}"), caKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        using var ca = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-10), DateTimeOffset.UtcNow.AddDays(days));
        WritePrivate(key, ca.ExportPkcs12(Pkcs12ExportPbeParameters.Pbes2Aes256Sha256, password));
        File.WriteAllText(crt, ca.ExportCertificatePem() + "\n");
        return (crt, key);
    }

    /// <summary>
    /// Issues <c>NAME.p12</c> from the CA in <paramref name="dir"/>: valid for server and client authentication (a
    /// node both dials and accepts; so does a client's Akka.Remote), for the name, localhost, 127.0.0.1 and every
    /// <paramref name="hosts"/> entry (an IP address or a DNS name).
    /// </summary>
    public static string Issue(string dir, string name, string password, IEnumerable<string>? hosts = null, int days = 825)
    {
        CheckPassword(password);
        CheckDays(days);
        if (!NamePattern().IsMatch(name) || name.Contains(".."))
            throw new InvalidInputException($"certificate name '{name}': use letters, digits, '.', '_' and '-' (it names the file {name}.p12 and the certificate's CN)");
        string caPath = Path.Combine(dir, CaKeyFile);
        if (!File.Exists(caPath))
            throw new InvalidInputException($"{caPath}: no CA here; make one first with `shardpipe cert create-ca --dir {dir}`");
        string output = Path.Combine(dir, name + ".p12");
        if (File.Exists(output))
            throw new InvalidInputException($"{output}: exists already; remove it to issue a new certificate for '{name}'");
        X509Certificate2 ca;
        try { ca = X509CertificateLoader.LoadPkcs12FromFile(caPath, password, X509KeyStorageFlags.EphemeralKeySet); }
        catch (CryptographicException ex) { throw new InvalidInputException($"{caPath}: cannot open the CA with the given password ({ex.Message.Trim()})"); }
        using (ca)
        {
            if (!ca.HasPrivateKey) throw new InvalidInputException($"{caPath}: holds no private key, so it cannot issue certificates");
            var san = new SubjectAlternativeNameBuilder();
            var names = new List<string> { name, "localhost", "127.0.0.1" };
            foreach (var h in hosts ?? [])
            {
                string host = h.Trim();
                if (host.Length == 0 || host.Length > 253 || host.Any(c => char.IsWhiteSpace(c) || c == '/' || c == ','))
                    throw new InvalidInputException($"--host '{h}': not a host name or IP address");
                names.Add(host);
            }
            foreach (var n in names.Distinct(StringComparer.OrdinalIgnoreCase))
                if (IPAddress.TryParse(n, out var ip)) san.AddIpAddress(ip); else san.AddDnsName(n);
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest(new X500DistinguishedName($"CN={name}"), key, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyAgreement, true));
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(new OidCollection { ServerAuth, ClientAuth }, false));
            request.CertificateExtensions.Add(san.Build());
            request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
            var notAfter = DateTimeOffset.UtcNow.AddDays(days);
            if (notAfter > ca.NotAfter) notAfter = ca.NotAfter;
            using var issued = request.Create(ca, DateTimeOffset.UtcNow.AddMinutes(-10), notAfter, RandomNumberGenerator.GetBytes(16));
            using var withKey = issued.CopyWithPrivateKey(key);
            WritePrivate(output, withKey.ExportPkcs12(Pkcs12ExportPbeParameters.Pbes2Aes256Sha256, password));
        }
        return output;
    }

    /// <summary>The <c>shardpipe.tls</c> HOCON for a certificate this folder holds (TLS is on once a certificate is given).</summary>
    public static string TlsHocon(string dir, string name, string passwordEnv = "SHARDPIPE_TLS_PASSWORD") =>
        $"shardpipe.tls {{ certificate = \"{Escape(Path.GetFullPath(Path.Combine(dir, name + ".p12")))}\", ca = \"{Escape(Path.GetFullPath(Path.Combine(dir, CaCertificateFile)))}\", password-env = {passwordEnv} }}";

    private static string Escape(string path) => path.Replace("\\", "\\\\").Replace("\"", "\\\"");

    private static void CheckPassword(string password)
    {
        if (string.IsNullOrEmpty(password))
            throw new InvalidInputException("SHARDPIPE_TLS_PASSWORD is not set: it encrypts every .p12 file, and nodes read it from there");
    }

    private static void CheckDays(int days)
    {
        if (days < 1 || days > 36500) throw new InvalidInputException($"--days {days}: give 1 to 36500");
    }

    private static void WritePrivate(string path, byte[] bytes)
    {
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        using var f = new FileStream(path, options);
        f.Write(bytes);
    }
}
