using System.Runtime.InteropServices;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Modeling.Core;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Loading;

/// <summary>
/// Offloaded weights read in place: each safetensors file is mapped once (private, so a stray write could never
/// reach the file), and each offloaded tensor is a libtorch tensor over its bytes in the mapping — no copy. Before a
/// module runs its ranges are populated (<c>MADV_POPULATE_READ</c>: the page tables filled in one call, from the page
/// cache or the disk); after it ran they are dropped (<c>MADV_DONTNEED</c>: the process lets go of the pages, the
/// page cache keeps them), so only the modules in flight count as resident. Linux only; elsewhere, or when a tensor's
/// bytes are not aligned to its element size, <see cref="DiskOffload"/> reads into buffers instead.
/// </summary>
internal sealed unsafe class MappedWeights : IDisposable
{
    private readonly Dictionary<string, (IntPtr Base, long Length)> _maps = new(StringComparer.Ordinal);
    private static readonly long Page = Environment.SystemPageSize;

    public static bool Supported => OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.Arm64;

    /// <summary>A tensor over <paramref name="info"/>'s bytes in <paramref name="file"/>'s mapping; null when it cannot be (unaligned, or the map failed).</summary>
    public (Tensor Tensor, IntPtr Start, long Length)? TensorOver(SafeTensorsFile file, TensorInfo info, ScalarType type)
    {
        int elem = DTypes.Size(TorchRuntime.ToDType(type));
        long offset = file.Header.DataStart + info.Begin;
        if (info.ByteLength == 0 || offset % elem != 0) return null;
        if (!_maps.TryGetValue(file.Path, out var map))
        {
            long length = new FileInfo(file.Path).Length;
            int fd = open(file.Path, 0 /* O_RDONLY */);
            if (fd < 0) return null;
            IntPtr p = mmap(IntPtr.Zero, (nuint)length, 1 | 2 /* PROT_READ | PROT_WRITE */, 2 /* MAP_PRIVATE */, fd, 0);
            close(fd);
            if (p == new IntPtr(-1)) return null;
            _maps[file.Path] = map = (p, length);
        }
        if (offset + info.ByteLength > map.Length) return null;
        IntPtr start = map.Base + (nint)offset;
        return (TensorMemory.OverNative(start, type, info.Shape), start, info.ByteLength);
    }

    /// <summary>
    /// Fills the page tables for these tensors' bytes (reading them from disk if the page cache lacks them). A file
    /// that was truncated or cannot be read since it was mapped fails here, as a typed error naming it — before any
    /// computation touches the pages (which would be a SIGBUS).
    /// </summary>
    public static void Populate(IEnumerable<(IntPtr Start, long Length, string Path)> ranges)
    {
        foreach (var (start, length, path) in ranges)
            if (Advise(start, length, 22 /* MADV_POPULATE_READ */) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno is 14 /* EFAULT */ or 5 /* EIO */ or 12 /* ENOMEM */)
                    throw new CheckpointFormatException(path, null, $"offloaded weights cannot be read from the file (errno {errno}: truncated or unreadable since it was opened)");
                // EINVAL: a kernel without MADV_POPULATE_READ; the pages fault in on first use instead.
            }
    }

    /// <summary>Lets go of these tensors' pages (the page cache keeps them; the next use maps them again).</summary>
    public static void Drop(IEnumerable<(IntPtr Start, long Length)> ranges)
    {
        foreach (var (start, length) in ranges) Advise(start, length, 4 /* MADV_DONTNEED */);
    }

    private static int Advise(IntPtr start, long length, int advice)
    {
        long begin = (long)start, end = begin + length;
        long aligned = begin / Page * Page;
        return madvise(new IntPtr(aligned), (nuint)(end - aligned), advice);
    }

    public void Dispose()
    {
        foreach (var (p, length) in _maps.Values) munmap(p, (nuint)length);
        _maps.Clear();
    }

    [DllImport("libc", SetLastError = true)] private static extern int open(string path, int flags);
    [DllImport("libc", SetLastError = true)] private static extern int close(int fd);
    [DllImport("libc", SetLastError = true)] private static extern IntPtr mmap(IntPtr addr, nuint length, int prot, int flags, int fd, long offset);
    [DllImport("libc", SetLastError = true)] private static extern int munmap(IntPtr addr, nuint length);
    [DllImport("libc", SetLastError = true)] private static extern int madvise(IntPtr addr, nuint length, int advice);
}
