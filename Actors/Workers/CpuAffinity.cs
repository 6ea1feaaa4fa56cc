using System.Runtime.InteropServices;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// Restricts the calling thread to a set of CPU cores (<c>shardpipe.compute-cores</c>): Linux
/// <c>sched_setaffinity</c> on the thread itself; threads it starts later (libtorch's intra-op pool) inherit the
/// set. Elsewhere it reports that it cannot.
/// </summary>
public static class CpuAffinity
{
    [DllImport("libc", SetLastError = true, EntryPoint = "sched_setaffinity")]
    private static extern int SetAffinity(int tid, nint size, byte[] mask);

    /// <summary>Pins the calling thread to <paramref name="cores"/>; false with the reason when the OS refuses or cannot.</summary>
    public static bool TryPinCurrentThread(IReadOnlyList<int> cores, out string? error)
    {
        error = null;
        if (cores.Count == 0) return true;
        if (!OperatingSystem.IsLinux())
        {
            error = "compute-cores is supported on Linux only";
            return false;
        }
        if (cores.Any(c => c < 0 || c >= 4096))
        {
            error = $"compute-cores [{string.Join(", ", cores)}] names a core outside 0..4095";
            return false;
        }
        var mask = new byte[(cores.Max() / 64 + 1) * 8]; // whole 64-bit words, as the kernel reads them
        foreach (int c in cores) mask[c / 8] |= (byte)(1 << (c % 8));
        if (SetAffinity(0, mask.Length, mask) == 0) return true; // 0 = the calling thread
        error = $"sched_setaffinity to cores [{string.Join(", ", cores)}] failed (errno {Marshal.GetLastPInvokeError()}; " +
                $"this machine has {Environment.ProcessorCount} cores)";
        return false;
    }
}
