namespace ShardPipe.Actors.Security;

/// <summary>
/// Secure by default (as CockroachDB): a node process runs mutual TLS unless it was told, in so many words, to run
/// insecure — <c>shardpipe.insecure = on</c> or <c>shardpipe node --insecure</c>. Embedded clusters (one process,
/// loopback only) never ask this rule.
/// </summary>
public static class NodeTransportRule
{
    /// <summary>What an insecure node logs at start: what anyone who reaches its ports can do.</summary>
    public const string InsecureWarning =
        "INSECURE: this node runs without TLS (shardpipe.insecure / --insecure). Anyone who can reach its ports — " +
        "Akka.Remote, the bulk channel and the activation links — can read the weights, prompts and tokens that cross " +
        "them, send requests, inject messages, and stop or split the cluster. Use it only on a network you trust; " +
        "`shardpipe cert` makes certificates (README, Security).";

    /// <summary>True when the node may start plaintext; throws when it would run plaintext without being told to.</summary>
    public static bool RunsInsecure(bool tlsEnabled, bool insecure, string configPath)
    {
        if (tlsEnabled) return false;
        if (insecure) return true;
        throw new InvalidInputException(
            $"{configPath}: shardpipe.tls has no certificate, and a node does not run plaintext unless told to. " +
            "Make certificates (SHARDPIPE_TLS_PASSWORD=… shardpipe cert create-ca --dir D; shardpipe cert create-node NAME --dir D) " +
            "and set shardpipe.tls { certificate = \"D/NAME.p12\", ca = \"D/ca.crt\" } — or start with --insecure " +
            "(or shardpipe.insecure = on) on a network you trust");
    }
}
