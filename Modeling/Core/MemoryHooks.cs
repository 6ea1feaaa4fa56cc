namespace ShardPipe.Modeling.Core;

/// <summary>
/// What transformers' <c>add_memory_hooks</c> records on one module: the process's resident set size just before and
/// just after its last forward, and the differences summed over every forward since the last reset.
/// </summary>
public sealed class MemoryHookState
{
    public long MemRssPreForward { get; private set; }
    public long MemRssPostForward { get; private set; }
    public long MemRssDiff { get; private set; }

    internal void Pre() => MemRssPreForward = ProcessMemory.Rss();

    internal void Post()
    {
        MemRssPostForward = ProcessMemory.Rss();
        MemRssDiff += MemRssPostForward - MemRssPreForward; // accumulates, as _hook_rss_memory_post_forward does
    }

    internal void Reset() => MemRssPreForward = MemRssPostForward = MemRssDiff = 0;
}

/// <summary>
/// A module's forward hook, taken with <c>using var hook = Hook();</c> at the top of its forward: records the RSS
/// before and after when memory hooks are on, and costs one null check when they are off.
/// </summary>
public readonly struct ForwardHook : IDisposable
{
    private readonly MemoryHookState? _state;

    internal ForwardHook(MemoryHookState? state)
    {
        _state = state;
        state?.Pre();
    }

    public void Dispose() => _state?.Post();
}

/// <summary>The resident set size of this process (psutil's <c>memory_info().rss</c>).</summary>
public static class ProcessMemory
{
    private static readonly long PageSize = Environment.SystemPageSize;

    /// <summary>Bytes resident now: <c>/proc/self/statm</c>'s second field in pages, else the runtime's working set.</summary>
    public static long Rss()
    {
        if (OperatingSystem.IsLinux())
        {
            try
            {
                var fields = File.ReadAllText("/proc/self/statm").Split(' ');
                if (fields.Length > 1 && long.TryParse(fields[1], out long pages)) return pages * PageSize;
            }
            catch (IOException) { }
        }
        return Environment.WorkingSet;
    }
}
