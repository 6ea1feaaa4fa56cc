using System.Diagnostics;

namespace ShardPipe.Tests.Support;

/// <summary>Runs the real <c>shardpipe</c> executable (built beside the tests) as a child process.</summary>
public static class ShardPipeProcess
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr);

    public static Result Run(params string[] args) => Run(null, args);

    public static Result Run(IDictionary<string, string>? env, params string[] args)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "shardpipe.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        // The host compiles loop methods fully optimised at once (a benchmark setting, see Host.csproj): it doubles
        // start-up, and these tests check behaviour, not speed, so they let the JIT tier loops as usual.
        psi.Environment["DOTNET_TC_QuickJitForLoops"] = "1";
        if (env is not null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException("shardpipe " + string.Join(' ', args) + " did not finish in 5 minutes");
        }
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}
