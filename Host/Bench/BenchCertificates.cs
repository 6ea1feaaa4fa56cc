using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace ShardPipe.Host.Bench;

/// <summary>
/// A throwaway CA and one certificate issued by it, for benchmarks that run a cluster under mutual TLS (every node
/// and the client present the same certificate: the CA's signature is what a peer checks). Made in process so that a
/// benchmark needs no openssl; operators use ops/make-certs.sh. Deleted on dispose.
/// </summary>
public sealed class BenchCertificates : IDisposable
{
    public const string PasswordEnv = "SHARDPIPE_BENCH_TLS_PASSWORD";
    private readonly string _dir = Directory.CreateTempSubdirectory("shardpipe-bench-tls").FullName;

    /// <summary>The <c>shardpipe.tls</c> section every node and the client use.</summary>
    public string Hocon { get; }

    public BenchCertificates()
    {
        string password = Convert.ToHexString(RandomNumberGenerator.GetBytes(12));
        Environment.SetEnvironmentVariable(PasswordEnv, password);
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var caRequest = new CertificateRequest("CN=ShardPipe bench CA", caKey, HashAlgorithmName.SHA256);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        using var ca = caRequest.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-2), DateTimeOffset.UtcNow.AddDays(8));
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=bench-node", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(new OidCollection { new("1.3.6.1.5.5.7.3.1"), new("1.3.6.1.5.5.7.3.2") }, false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("localhost");
        san.AddIpAddress(System.Net.IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        using var issued = request.Create(ca, DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(7), RandomNumberGenerator.GetBytes(8));
        using var withKey = issued.CopyWithPrivateKey(key);
        string caPath = Path.Combine(_dir, "ca.crt"), certPath = Path.Combine(_dir, "bench-node.p12");
        File.WriteAllText(caPath, ca.ExportCertificatePem());
        File.WriteAllBytes(certPath, withKey.Export(X509ContentType.Pkcs12, password));
        Hocon = $"shardpipe.tls {{ enabled = on, certificate = \"{certPath}\", ca = \"{caPath}\", password-env = {PasswordEnv} }}";
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
