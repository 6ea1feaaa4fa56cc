using System.Security.Cryptography.X509Certificates;
using Akka.Configuration;
using ShardPipe.Actors.Security;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors.Security;

/// <summary>
/// <c>shardpipe cert</c>'s CA: what it issues is what ClusterTls (the one trust rule of Akka.Remote and the side
/// channels) accepts, another CA's certificate is refused, and bad requests are typed errors that write nothing.
/// </summary>
public class CertificateAuthorityTests
{
    private const string Env = "SHARDPIPE_CERT_TEST_PASSWORD";
    private const string Password = "correct horse";

    static CertificateAuthorityTests() => Environment.SetEnvironmentVariable(Env, Password);

    private static ClusterTls Tls(string dir, string name) =>
        ClusterTls.From(ConfigurationFactory.ParseString(CertificateAuthority.TlsHocon(dir, name, Env)))!;

    [Fact]
    public void Issued_certificates_chain_to_their_ca_and_carry_the_names_they_are_reached_by()
    {
        using var tmp = new TempDir();
        using var other = new TempDir();
        CertificateAuthority.CreateCa(tmp.Path, Password);
        CertificateAuthority.Issue(tmp.Path, "node-1", Password, ["10.1.2.3", "node-1.example"]);
        CertificateAuthority.Issue(tmp.Path, "client", Password);
        CertificateAuthority.CreateCa(other.Path, Password);
        CertificateAuthority.Issue(other.Path, "intruder", Password);

        // TLS is on because a certificate is given (enabled = auto): no "enabled = on" in the config.
        var node = Tls(tmp.Path, "node-1");
        Assert.True(node.Certificate.HasPrivateKey);
        Assert.Null(node.Refusal(Tls(tmp.Path, "client").Certificate));
        Assert.Contains("does not chain", node.Refusal(Tls(other.Path, "intruder").Certificate));

        var san = node.Certificate.Extensions.OfType<X509SubjectAlternativeNameExtension>().Single();
        Assert.Equal(new[] { "localhost", "node-1", "node-1.example" }, san.EnumerateDnsNames().Order());
        Assert.Equal(new[] { "10.1.2.3", "127.0.0.1" }, san.EnumerateIPAddresses().Select(a => a.ToString()).Order());
        Assert.Equal("CN=node-1", node.Certificate.Subject);
        Assert.False(node.Certificate.Extensions.OfType<X509BasicConstraintsExtension>().Single().CertificateAuthority);

        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(tmp.File("ca.p12")));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(tmp.File("node-1.p12")));
        }
        // ca.crt is PEM and carries no key.
        using var ca = X509Certificate2.CreateFromPem(File.ReadAllText(tmp.File("ca.crt")));
        Assert.False(ca.HasPrivateKey);
        Assert.True(ca.Extensions.OfType<X509BasicConstraintsExtension>().Single().CertificateAuthority);
    }

    [Fact]
    public void Bad_requests_are_typed_errors_that_write_nothing()
    {
        using var tmp = new TempDir();
        Assert.Contains("no CA here", Assert.Throws<InvalidInputException>(() => CertificateAuthority.Issue(tmp.Path, "node-1", Password)).Message);
        Assert.Contains("SHARDPIPE_TLS_PASSWORD", Assert.Throws<InvalidInputException>(() => CertificateAuthority.CreateCa(tmp.Path, "")).Message);
        Assert.Empty(Directory.GetFiles(tmp.Path));
        CertificateAuthority.CreateCa(tmp.Path, Password);
        Assert.Contains("a CA is there already", Assert.Throws<InvalidInputException>(() => CertificateAuthority.CreateCa(tmp.Path, Password)).Message);
        foreach (var bad in new[] { "../evil", "a/b", "", "-x", "node 1" })
            Assert.Contains($"'{bad}'", Assert.Throws<InvalidInputException>(() => CertificateAuthority.Issue(tmp.Path, bad, Password)).Message);
        Assert.Contains("password", Assert.Throws<InvalidInputException>(() => CertificateAuthority.Issue(tmp.Path, "node-1", "wrong")).Message);
        Assert.Contains("--host", Assert.Throws<InvalidInputException>(() => CertificateAuthority.Issue(tmp.Path, "node-1", Password, ["a b"])).Message);
        Assert.Contains("--days", Assert.Throws<InvalidInputException>(() => CertificateAuthority.Issue(tmp.Path, "node-1", Password, days: 0)).Message);
        Assert.Equal(new[] { "ca.crt", "ca.p12" }, Directory.GetFiles(tmp.Path).Select(Path.GetFileName).Order());
        CertificateAuthority.Issue(tmp.Path, "node-1", Password);
        Assert.Contains("exists already", Assert.Throws<InvalidInputException>(() => CertificateAuthority.Issue(tmp.Path, "node-1", Password)).Message);
    }

    [Fact]
    public void Plaintext_needs_to_be_asked_for()
    {
        Assert.False(NodeTransportRule.RunsInsecure(tlsEnabled: true, insecure: false, "n.conf"));
        Assert.False(NodeTransportRule.RunsInsecure(tlsEnabled: true, insecure: true, "n.conf"));
        Assert.True(NodeTransportRule.RunsInsecure(tlsEnabled: false, insecure: true, "n.conf"));
        var refused = Assert.Throws<InvalidInputException>(() => NodeTransportRule.RunsInsecure(tlsEnabled: false, insecure: false, "n.conf"));
        Assert.StartsWith("n.conf: ", refused.Message);
        Assert.Contains("--insecure", refused.Message);
        Assert.Contains("shardpipe cert create-ca", refused.Message);
    }

    [Theory]
    [InlineData("", false)]
    [InlineData("shardpipe.tls.enabled = off", false)]
    [InlineData("shardpipe.tls.enabled = maybe", null)]
    public void Tls_enabled_is_auto_on_or_off(string hocon, bool? enabled)
    {
        if (enabled is null)
            Assert.Contains("not auto, on or off", Assert.ThrowsAny<Exception>(() => ShardPipe.Actors.Settings.TlsSettings.From(ConfigurationFactory.ParseString(hocon))).Message);
        else
            Assert.Equal(enabled, ShardPipe.Actors.Settings.TlsSettings.From(ConfigurationFactory.ParseString(hocon)).Enabled);
    }
}
