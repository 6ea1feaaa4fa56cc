using System.Security.Cryptography;
using ShardPipe.Actors.Security;

namespace ShardPipe.Host.Bench;

/// <summary>
/// A throwaway CA with a certificate per name (made by <see cref="CertificateAuthority"/>, as <c>shardpipe cert</c>
/// does), for benchmarks and tests that run a cluster under mutual TLS. Its password lives in
/// <see cref="PasswordEnv"/> of this process (node processes started from it inherit it). Deleted on dispose.
/// </summary>
public sealed class BenchCertificates : IDisposable
{
    public const string PasswordEnv = "SHARDPIPE_BENCH_TLS_PASSWORD";
    private readonly string _dir = System.IO.Directory.CreateTempSubdirectory("shardpipe-bench-tls").FullName;

    /// <summary>The folder holding ca.crt, ca.p12 and NAME.p12 for each name.</summary>
    public string Directory => _dir;

    /// <summary>The <c>shardpipe.tls</c> section of the first name (by default the one certificate every node and the client present).</summary>
    public string Hocon { get; }

    public BenchCertificates(params string[] names)
    {
        if (names.Length == 0) names = ["bench-node"];
        string password = Environment.GetEnvironmentVariable(PasswordEnv) is { Length: > 0 } existing ? existing
            : Convert.ToHexString(RandomNumberGenerator.GetBytes(12));
        Environment.SetEnvironmentVariable(PasswordEnv, password);
        CertificateAuthority.CreateCa(_dir, password, days: 7, commonName: "ShardPipe test CA");
        foreach (var n in names) CertificateAuthority.Issue(_dir, n, password, days: 7);
        Hocon = HoconFor(names[0]);
    }

    /// <summary>The <c>shardpipe.tls</c> section for one of the names.</summary>
    public string HoconFor(string name) => CertificateAuthority.TlsHocon(_dir, name, PasswordEnv);

    public void Dispose() => System.IO.Directory.Delete(_dir, recursive: true);
}
