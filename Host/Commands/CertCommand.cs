using System.CommandLine;
using Microsoft.Extensions.Logging;
using ShardPipe.Actors.Security;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Commands;

/// <summary>
/// <c>shardpipe cert create-ca|create-node|create-client</c>: the cluster's CA and a certificate per node or client,
/// made with .NET's X509 APIs (no openssl), encrypted with <c>$SHARDPIPE_TLS_PASSWORD</c> — the variable a node reads.
/// </summary>
public static class CertCommand
{
    public const string PasswordEnv = "SHARDPIPE_TLS_PASSWORD";

    public static Command Create()
    {
        var cmd = new Command("cert", "Make the cluster's certificate authority and node/client certificates for mutual TLS (password from $SHARDPIPE_TLS_PASSWORD)");
        cmd.Subcommands.Add(CreateCa());
        cmd.Subcommands.Add(Issue("create-node", "a node (valid for its name, localhost, 127.0.0.1 and every --host)", hosts: true));
        cmd.Subcommands.Add(Issue("create-client", "a client (shardpipe load/generate/status --client-config, serve on a cluster)", hosts: false));
        return cmd;
    }

    private static Option<string> Dir() => new("--dir") { Description = "The folder of the CA (ca.crt, ca.p12) and the certificates", Required = true };
    private static Option<int> Days() => new("--days") { Description = "Validity in days (default 825)", DefaultValueFactory = _ => 825 };

    private static Command CreateCa()
    {
        var dir = Dir();
        var days = Days();
        var cmd = new Command("create-ca", "Make DIR/ca.crt (what every node and client trusts) and DIR/ca.p12 (the CA's key: keep it off the nodes)") { dir, days };
        CommandAction.Set(cmd, (parse, log) =>
        {
            var (crt, key) = CertificateAuthority.CreateCa(parse.GetValue(dir)!, Password(), parse.GetValue(days));
            log.LogInformation("CA made: trust {Crt}; its key {Key} issues certificates", crt, key);
            Console.WriteLine(crt);
            Console.WriteLine(key);
            return 0;
        });
        return cmd;
    }

    private static Command Issue(string verb, string what, bool hosts)
    {
        var name = new Argument<string>("NAME") { Description = "The certificate's name (its CN and the file DIR/NAME.p12)" };
        var dir = Dir();
        var days = Days();
        var host = new Option<string[]>("--host") { Description = "Another host name or IP address this node is reached on (repeatable)", AllowMultipleArgumentsPerToken = true };
        var cmd = new Command(verb, $"Issue DIR/NAME.p12 for {what}") { name, dir, days };
        if (hosts) cmd.Options.Add(host);
        CommandAction.Set(cmd, (parse, log) =>
        {
            string d = parse.GetValue(dir)!, n = parse.GetValue(name)!;
            string path = CertificateAuthority.Issue(d, n, Password(), hosts ? parse.GetValue(host) : null, parse.GetValue(days));
            log.LogInformation("issued {Path}; its config: {Hocon}", path, CertificateAuthority.TlsHocon(d, n));
            Console.WriteLine(path);
            return 0;
        });
        return cmd;
    }

    private static string Password() => Environment.GetEnvironmentVariable(PasswordEnv) is { Length: > 0 } p ? p
        : throw new InvalidInputException($"{PasswordEnv} is not set: it encrypts every .p12 file, and nodes read it from there");
}
