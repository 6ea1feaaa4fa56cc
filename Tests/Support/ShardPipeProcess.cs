using System.Diagnostics;

namespace ShardPipe.Tests.Support;

/// <summary>Runs the real <c>shardpipe</c> executable (built beside the tests) as a child process.</summary>
public static class ShardPipeProcess
{
    /// <param name="PeakRssBytes">The process's peak resident set (VmHWM, the runtime included), sampled until it exited.</param>
    public sealed record Result(int ExitCode, string Stdout, string Stderr, long PeakRssBytes = 0, TimeSpan Elapsed = default)
    {
        /// <summary>The last line of stderr that is not a log line: the CLI's own last word (its <c>error: …</c> line).
        /// An embedded cluster's actor systems log asynchronously, so one of their lines (timestamped, "HH:mm:ss") may
        /// land after it while they shut down.</summary>
        public string LastMessageLine => Stderr.Trim().Split('\n').Select(l => l.TrimEnd('\r')).LastOrDefault(l => !LogLine.IsMatch(l)) ?? "";

        private static readonly System.Text.RegularExpressions.Regex LogLine = new(@"^\d{2}:\d{2}:\d{2}(\.\d+)? ", System.Text.RegularExpressions.RegexOptions.Compiled);
    }

    public static Result Run(params string[] args) => Run(null, args);

    /// <summary>Starts <c>shardpipe</c> and returns at once (its output drained and dropped): for a test that kills it.</summary>
    public static Process Start(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "shardpipe.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_TC_QuickJitForLoops"] = "1";
        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

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
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        long peak = 0;
        // VmHWM is the high-water mark: any sample after a peak shows it, so polling until exit misses nothing but the
        // last few milliseconds. A dedicated thread, so that a busy thread pool cannot delay the first sample.
        string status = $"/proc/{p.Id}/status";
        var sampler = new Thread(() =>
        {
            while (true)
            {
                try
                {
                    foreach (var line in File.ReadLines(status))
                        if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                            peak = Math.Max(peak, long.Parse(line[6..].Trim().Split(' ')[0]) * 1024);
                }
                catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException) { }
                if (p.HasExited) return;
                Thread.Sleep(2);
            }
        }) { IsBackground = true };
        sampler.Start();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            sampler.Join(); // before the process object is disposed: the sampler reads it until it sees the exit
            throw new TimeoutException("shardpipe " + string.Join(' ', args) + " did not finish in 5 minutes");
        }
        var elapsed = clock.Elapsed;
        sampler.Join();
        return new Result(p.ExitCode, stdout.Result, stderr.Result, peak, elapsed);
    }
}
