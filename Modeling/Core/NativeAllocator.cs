using System.Runtime.InteropServices;

namespace ShardPipe.Modeling.Core;

/// <summary>
/// How the process's C allocator (glibc malloc, which libtorch's CPU tensors come from) keeps memory. By default glibc
/// serves blocks of 128 KB and more (the dynamic threshold rises with use) straight from <c>mmap</c> and gives freed
/// memory back to the kernel (<c>munmap</c>, trimming the heap top), so a step's activations — a 16-prompt prefill's
/// are megabytes a tensor — fault their pages in afresh each time they are allocated. On this VM a page fault goes
/// through the hypervisor: the first layer of a 383-position merged prefill cost 40–80 ms more than the others
/// (session 12). <see cref="KeepFreedMemory"/> serves blocks up to 32 MB from the heap and keeps what is freed, so a
/// process reuses its own pages, as a caching allocator does; RSS stays at its high-water mark. Set
/// <c>SHARDPIPE_MALLOC_KEEP=0</c> to leave glibc's defaults.
/// </summary>
public static class NativeAllocator
{
    private const int M_TRIM_THRESHOLD = -1, M_TOP_PAD = -2, M_MMAP_THRESHOLD = -3;

    /// <summary>Blocks at least this large still come from <c>mmap</c> (glibc's ceiling for the threshold on 64-bit: 32 MB).</summary>
    public const int MmapThresholdBytes = 32 << 20;

    /// <summary>Free memory at the heap top kept before glibc trims it (1 GiB).</summary>
    public const int TrimThresholdBytes = 1 << 30;

    /// <summary>Extra bytes the heap grows by when it must grow (16 MB), so a run of large blocks grows it once.</summary>
    public const int TopPadBytes = 16 << 20;

    /// <summary>The environment variable that turns it off (<c>0</c>).</summary>
    public const string EnvironmentVariable = "SHARDPIPE_MALLOC_KEEP";

    /// <summary>Applies the settings above (glibc on Linux only; once per process is enough); false where it did not
    /// (another OS or C library, or <see cref="EnvironmentVariable"/> = 0).</summary>
    public static bool KeepFreedMemory()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable(EnvironmentVariable) == "0") return false;
        try
        {
            // mallopt returns 1 on success; each call also turns off glibc's dynamic threshold adjustment.
            return mallopt(M_MMAP_THRESHOLD, MmapThresholdBytes) == 1
                   & mallopt(M_TRIM_THRESHOLD, TrimThresholdBytes) == 1
                   & mallopt(M_TOP_PAD, TopPadBytes) == 1;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            return false; // not glibc (musl has no tunable malloc)
        }
    }

    [DllImport("libc", EntryPoint = "mallopt")]
    private static extern int mallopt(int param, int value);
}
