using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Akka.Configuration;
using Akka.Event;
using Akka.Remote.Transport.DotNetty;
using ShardPipe.Actors.Settings;

namespace ShardPipe.Actors.Security;

/// <summary>
/// The cluster's mutual TLS, one rule for every connection a node makes or takes — Akka.Remote (through
/// <see cref="AkkaSetup"/>) and both side channels (<see cref="Client"/>, <see cref="Server"/>): each side presents
/// its certificate, and a peer is accepted only when <see cref="Refusal"/> finds nothing wrong with its certificate
/// (issued by the cluster's CA, pinned when pins are listed, within its validity). Hostnames are not checked: nodes
/// reach each other by address, and the CA's signature is the identity.
/// </summary>
public sealed class ClusterTls
{
    public X509Certificate2 Certificate { get; }
    public TimeSpan HandshakeTimeout { get; }
    private readonly X509Certificate2Collection _authorities;
    private readonly HashSet<string> _pinned;
    private readonly SslStreamCertificateContext _context;

    private ClusterTls(X509Certificate2 certificate, X509Certificate2Collection authorities, IEnumerable<string> pinned, TimeSpan handshakeTimeout)
    {
        Certificate = certificate;
        _authorities = authorities;
        _pinned = new HashSet<string>(pinned, StringComparer.OrdinalIgnoreCase);
        HandshakeTimeout = handshakeTimeout;
        _context = SslStreamCertificateContext.Create(certificate, additionalCertificates: null, offline: true);
    }

    /// <summary>The TLS of a host or client config; null when <c>shardpipe.tls.enabled</c> is off (plaintext).</summary>
    public static ClusterTls? From(Config config) => Load(TlsSettings.From(config));

    public static ClusterTls? Load(TlsSettings s)
    {
        if (!s.Enabled) return null;
        if (!File.Exists(s.Certificate)) throw new ConfigurationException($"shardpipe.tls.certificate: {s.Certificate} not found");
        string? password = s.PasswordEnv.Length > 0 ? Environment.GetEnvironmentVariable(s.PasswordEnv) : null;
        X509Certificate2 cert;
        try { cert = X509CertificateLoader.LoadPkcs12FromFile(s.Certificate, password, X509KeyStorageFlags.EphemeralKeySet); }
        catch (CryptographicException ex)
        {
            throw new ConfigurationException($"shardpipe.tls.certificate: {s.Certificate} cannot be read as PKCS#12 with the password in ${s.PasswordEnv}" +
                (password is null ? " (the variable is not set)" : "") + $": {ex.Message}");
        }
        if (!cert.HasPrivateKey) throw new ConfigurationException($"shardpipe.tls.certificate: {s.Certificate} holds no private key");
        var authorities = new X509Certificate2Collection();
        if (s.Ca.Length > 0)
        {
            if (!File.Exists(s.Ca)) throw new ConfigurationException($"shardpipe.tls.ca: {s.Ca} not found");
            try { authorities.ImportFromPemFile(s.Ca); }
            catch (CryptographicException ex) { throw new ConfigurationException($"shardpipe.tls.ca: {s.Ca} is not a PEM certificate: {ex.Message}"); }
            if (authorities.Count == 0) throw new ConfigurationException($"shardpipe.tls.ca: {s.Ca} holds no certificate");
        }
        var tls = new ClusterTls(cert, authorities, s.PinnedThumbprints, s.HandshakeTimeout);
        // A node whose own certificate its peers would refuse could never join: say so now, not after a join timeout.
        if (tls.Refusal(cert) is { } why) throw new ConfigurationException($"shardpipe.tls.certificate: {s.Certificate}: its peers would refuse it: {why}");
        return tls;
    }

    /// <summary>Why a peer's certificate is refused; null when it is accepted.</summary>
    public string? Refusal(X509Certificate? presented)
    {
        if (presented is null) return "no certificate presented";
        var cert = presented as X509Certificate2 ?? X509CertificateLoader.LoadCertificate(presented.GetRawCertData());
        if (_pinned.Count > 0 && !_pinned.Contains(cert.Thumbprint))
            return $"certificate '{cert.Subject}' (thumbprint {cert.Thumbprint}) is not pinned";
        if (_authorities.Count > 0)
        {
            using var chain = new X509Chain();
            chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            chain.ChainPolicy.CustomTrustStore.AddRange(_authorities);
            chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
            if (!chain.Build(cert))
                return $"certificate '{cert.Subject}' does not chain to the cluster's CA ({string.Join("; ", chain.ChainStatus.Select(c => c.StatusInformation.Trim()).Distinct())})";
        }
        else if (DateTime.Now < cert.NotBefore || DateTime.Now > cert.NotAfter)
            return $"certificate '{cert.Subject}' is outside its validity ({cert.NotBefore:u} – {cert.NotAfter:u})";
        return null;
    }

    /// <summary>Akka.Remote's TLS: mutual, validated by <see cref="Refusal"/> (refusals logged by Akka with the reason logged here).</summary>
    public DotNettySslSetup AkkaSetup() =>
        new(Certificate, suppressValidation: false, requireMutualAuthentication: true, validateCertificateHostname: false,
            customValidator: (cert, _, peer, _, log) =>
            {
                if (Refusal(cert) is not { } why) return true;
                log.Warning("TLS: refused {0}: {1}", peer, why);
                return false;
            });

    /// <summary>
    /// How a node's or a client's ActorSystem is created from its (full) config: with <c>shardpipe.tls</c> on, Akka.Remote
    /// runs mutual TLS with this certificate and rule; off, plaintext as configured.
    /// </summary>
    /// <remarks>
    /// Under TLS, Akka's addresses use the protocol <c>akka.ssl.tcp</c>: seed nodes written as <c>akka.tcp://…</c> are
    /// taken as the same nodes over TLS (<see cref="ForTransport"/>), so one config turns TLS on with one setting.
    /// </remarks>
    public static Akka.Actor.Setup.ActorSystemSetup SystemSetup(Config config, out ClusterTls? tls)
    {
        tls = From(config);
        if (tls is null) return Akka.Actor.Setup.ActorSystemSetup.Create(Akka.Actor.BootstrapSetup.Create().WithConfig(config));
        var seeds = config.GetStringList("akka.cluster.seed-nodes") ?? new List<string>();
        string seedList = string.Join(", ", seeds.Select(a => "\"" + ForTransport(a, tls: true) + "\""));
        var withSsl = ConfigurationFactory.ParseString($"akka.remote.dot-netty.tcp.enable-ssl = on\nakka.cluster.seed-nodes = [{seedList}]").WithFallback(config);
        return Akka.Actor.BootstrapSetup.Create().WithConfig(withSsl).And(tls.AkkaSetup());
    }

    /// <summary>
    /// Whether Akka stopped <paramref name="system"/> because a TLS handshake it started failed. Akka.Remote (1.5.73)
    /// runs CoordinatedShutdown with exit code 79 when an outbound handshake fails — this node refused the peer's
    /// certificate or the peer refused ours, i.e. this node does not belong with the peer it dialled. Inbound
    /// failures (a stranger dialling in) are only logged and never stop a node.
    /// </summary>
    public static bool StoppedByHandshakeFailure(Akka.Actor.ActorSystem system) =>
        Akka.Actor.CoordinatedShutdown.Get(system).ShutdownReason?.GetType().Name == "TlsHandshakeFailureReason";

    /// <summary>The exit status of a node stopped by a failed TLS handshake (Akka's own choice, kept).</summary>
    public const int HandshakeFailureExitCode = 79;

    /// <summary>Akka's address protocol for a transport with or without TLS.</summary>
    public static string Protocol(bool tls) => tls ? "akka.ssl.tcp" : "akka.tcp";

    /// <summary>An <c>akka.tcp://</c> or <c>akka.ssl.tcp://</c> address with the protocol of this transport.</summary>
    public static string ForTransport(string address, bool tls)
    {
        foreach (var p in new[] { "akka.ssl.tcp://", "akka.tcp://" })
            if (address.StartsWith(p, StringComparison.Ordinal)) return Protocol(tls) + "://" + address[p.Length..];
        return address;
    }

    public static Akka.Actor.Address ForTransport(Akka.Actor.Address address, bool tls) =>
        new(Protocol(tls), address.System, address.Host, address.Port);

    /// <summary>The client side of a side channel's connection: TLS over <paramref name="s"/>, this node's certificate presented.</summary>
    public Stream Client(Socket s, string host) => Handshake(s, $"with {host}", (ssl, validate, cancel) => ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
    {
        TargetHost = host,
        ClientCertificateContext = _context,
        EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        RemoteCertificateValidationCallback = validate,
    }, cancel));

    /// <summary>The server side of a side channel's connection: TLS over an accepted <paramref name="s"/>, a client certificate required.</summary>
    public Stream Server(Socket s) => Handshake(s, $"from {s.RemoteEndPoint}", (ssl, validate, cancel) => ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
    {
        ServerCertificateContext = _context,
        ClientCertificateRequired = true,
        EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        RemoteCertificateValidationCallback = validate,
    }, cancel));

    /// <summary>
    /// One side's handshake over <paramref name="s"/> within <see cref="HandshakeTimeout"/>, the peer checked by
    /// <see cref="Refusal"/>; a failure is a <see cref="TlsRefusedException"/> with our reason when we refused the peer.
    /// </summary>
    private Stream Handshake(Socket s, string peer, Func<SslStream, RemoteCertificateValidationCallback, CancellationToken, Task> authenticate)
    {
        var ssl = new SslStream(new NetworkStream(s, ownsSocket: false), leaveInnerStreamOpen: false);
        string? refused = null;
        try
        {
            using var cts = new CancellationTokenSource(HandshakeTimeout);
            authenticate(ssl, (_, cert, _, _) => (refused = Refusal(cert)) is null, cts.Token).GetAwaiter().GetResult();
            return ssl;
        }
        catch (Exception ex) when (ex is AuthenticationException or OperationCanceledException or IOException)
        {
            ssl.Dispose();
            throw new TlsRefusedException($"TLS handshake {peer} failed: {refused ?? ex.Message}");
        }
    }

    /// <summary>A side channel's stream over a connected socket: TLS when <paramref name="tls"/> is set, else the plain socket.</summary>
    public static Stream Open(Socket s, ClusterTls? tls, string host) => tls is null ? new NetworkStream(s, ownsSocket: false) : tls.Client(s, host);

    /// <summary>The accepting side of <see cref="Open"/>.</summary>
    public static Stream Accept(Socket s, ClusterTls? tls) => tls is null ? new NetworkStream(s, ownsSocket: false) : tls.Server(s);
}

/// <summary>A TLS handshake failed: the peer's certificate was refused, or it refused ours.</summary>
public sealed class TlsRefusedException : ShardPipeException
{
    public TlsRefusedException(string message) : base(message) { }
}
