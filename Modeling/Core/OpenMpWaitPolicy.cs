namespace ShardPipe.Modeling.Core;

/// <summary>
/// How libtorch's OpenMP threads wait between parallel regions. libgomp's default keeps a finished region's worker
/// spinning for a while before it sleeps, and a step calls libtorch often enough (a prefill's attention, masks, norms
/// between our kernels' Linears) that the worker never sleeps: on 2 cores it spun on one of them while our kernels'
/// helper thread (<see cref="Layers.SpinPool"/>) waited for it. A <c>perf</c> profile of a 16-prompt merged prefill put
/// 37 % of the process's samples in libgomp's spin and gave the kernel helper 16 %; with the worker sleeping at once
/// (<c>OMP_WAIT_POLICY=PASSIVE</c>) the same 12 layers over 16 × 10 prompt positions took 162–189 ms instead of
/// 209–280 ms, and decode steps (little libtorch work) were unchanged (BENCHMARKS.md, session 15).
/// <para>libgomp reads the variable once, when it is loaded (with libtorch, at the first tensor operation), and from
/// the C environment, which .NET's <see cref="Environment.SetEnvironmentVariable(string, string?)"/> does not change:
/// so <see cref="Apply"/> runs first thing in the host's <c>Main</c> and again (too late only when something loaded
/// libtorch before it) in <see cref="TorchRuntime.Initialise"/>. A value the user set is kept.</para>
/// </summary>
public static class OpenMpWaitPolicy
{
    /// <summary>libgomp's variable (values <c>PASSIVE</c> or <c>ACTIVE</c>, any case).</summary>
    public const string EnvironmentVariable = "OMP_WAIT_POLICY";

    private static readonly object Gate = new();
    private static string? _effective;

    /// <summary>What the process's OpenMP threads do (reported in every benchmark's JSON as <c>openmp_wait_policy</c>):
    /// <c>passive</c> (set here), <c>passive (OMP_WAIT_POLICY)</c> / <c>active (OMP_WAIT_POLICY)</c> (the user's), or
    /// <c>libgomp default (loaded before it could be set)</c>; <c>not applicable</c> off Linux. Applies it if nothing has.</summary>
    public static string Effective => Apply();

    /// <summary>Sets <c>OMP_WAIT_POLICY=PASSIVE</c> in the C environment unless the user set it or libgomp is already
    /// loaded (once; later calls return the first one's outcome). Returns <see cref="Effective"/>.</summary>
    public static string Apply()
    {
        lock (Gate)
        {
            if (_effective is not null) return _effective;
            var (set, report) = Decide(Environment.GetEnvironmentVariable(EnvironmentVariable), LibgompLoaded(), OperatingSystem.IsLinux());
            if (set && TorchRuntime.setenv(EnvironmentVariable, "PASSIVE", 1) != 0) report = "libgomp default (setenv failed)";
            return _effective = report;
        }
    }

    /// <summary>
    /// The decision: whether to set the variable, and what the process's policy then is, given the user's value (null:
    /// unset), whether libgomp is already in the process (its setting is then fixed) and whether this is Linux
    /// (libtorch's OpenMP runtime is libgomp there; elsewhere nothing is set).
    /// </summary>
    public static (bool Set, string Report) Decide(string? userValue, bool libgompLoaded, bool linux)
    {
        if (!linux) return (false, "not applicable");
        if (!string.IsNullOrWhiteSpace(userValue)) return (false, $"{userValue.Trim().ToLowerInvariant()} ({EnvironmentVariable})");
        if (libgompLoaded) return (false, "libgomp default (loaded before it could be set)");
        return (true, "passive");
    }

    /// <summary>Whether libgomp is mapped into this process (Linux: <c>/proc/self/maps</c>).</summary>
    private static bool LibgompLoaded()
    {
        if (!OperatingSystem.IsLinux()) return false;
        try
        {
            foreach (var line in File.ReadLines("/proc/self/maps"))
                if (line.Contains("libgomp", StringComparison.Ordinal)) return true;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return false;
    }

}
