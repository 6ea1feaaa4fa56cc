using System.Runtime.InteropServices;

namespace ShardPipe.Checkpoints;

/// <summary>
/// Page-aligned native memory for tensor data. Large buffers ask the kernel for transparent huge pages
/// (this OS runs THP in <c>madvise</c> mode), so first touch costs one fault per 2 MiB instead of per 4 KiB —
/// fresh memory, not the file read, is what dominates a naive loader.
/// </summary>
public sealed unsafe class NativeBuffer : IDisposable
{
    private const long HugePage = 2L << 20;
    private const int ProtRead = 1, ProtWrite = 2, MapPrivate = 2, MapAnonymous = 0x20, MadvHugepage = 14;

    private byte* _mapBase;
    private readonly long _mapLength;
    private bool _disposed;

    public byte* Pointer { get; }
    public long Length { get; }

    public NativeBuffer(long length)
    {
        Length = length;
        if (!OperatingSystem.IsLinux() || length < HugePage)
        {
            _mapLength = 0;
            Pointer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(length, 1), 64);
            return;
        }
        // Over-map by one huge page so the usable range can start on a 2 MiB boundary.
        _mapLength = length + HugePage;
        void* p = mmap(null, (nuint)_mapLength, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        if (p == (void*)-1) throw new OutOfMemoryException($"mmap of {length} bytes failed (errno {Marshal.GetLastPInvokeError()})");
        _mapBase = (byte*)p;
        long aligned = ((long)p + HugePage - 1) & ~(HugePage - 1);
        Pointer = (byte*)aligned;
        madvise(Pointer, (nuint)length, MadvHugepage); // advisory: failure only means 4 KiB pages
    }

    public Span<byte> Span => new(Pointer, checked((int)Length));

    public Span<byte> Slice(long offset, int length)
    {
        if (offset < 0 || offset + length > Length) throw new ArgumentOutOfRangeException(nameof(offset));
        return new Span<byte>(Pointer + offset, length);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_mapLength > 0) munmap(_mapBase, (nuint)_mapLength);
        else NativeMemory.AlignedFree(Pointer);
        _mapBase = null;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern void* mmap(void* addr, nuint length, int prot, int flags, int fd, nint offset);

    [DllImport("libc", SetLastError = true)]
    private static extern int munmap(void* addr, nuint length);

    [DllImport("libc", SetLastError = true)]
    private static extern int madvise(void* addr, nuint length, int advice);
}
