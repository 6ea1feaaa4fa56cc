using System.IO.MemoryMappedFiles;
using Microsoft.Win32.SafeHandles;

namespace ShardPipe.Checkpoints.SafeTensors;

/// <summary>
/// An open safetensors file: a validated header plus two ways at the bytes. <see cref="ReadInto"/> copies a
/// tensor with positional reads straight into caller memory (nothing stays mapped or resident in this
/// process); <see cref="Map"/> gives zero-copy access through a memory mapping that is released, and its
/// pages dropped from this process, when the view is disposed.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    public string Path { get; }
    public long Length { get; }
    public SafeTensorsHeader Header { get; }
    public IReadOnlyList<TensorInfo> Tensors => Header.Tensors;

    private readonly SafeFileHandle _handle;
    private MemoryMappedFile? _mapping;
    private readonly object _gate = new();

    private SafeTensorsFile(string path, SafeFileHandle handle, long length, SafeTensorsHeader header)
    {
        Path = path;
        _handle = handle;
        Length = length;
        Header = header;
    }

    public static SafeTensorsFile Open(string path)
    {
        SafeFileHandle handle;
        try
        {
            handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        }
        catch (FileNotFoundException ex)
        {
            throw new CheckpointNotFoundException($"{path}: file not found", new[] { path }) { Source = ex.Source };
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointFormatException(path, null, $"cannot open: {ex.Message}", ex);
        }
        try
        {
            long length = RandomAccess.GetLength(handle);
            Span<byte> prefix = stackalloc byte[8];
            int got = length >= 8 ? RandomAccess.Read(handle, prefix, 0) : 0;
            long n = SafeTensorsHeader.ReadHeaderLength(path, prefix[..got], length);
            var json = new byte[n];
            ReadExactly(handle, json, 8, path);
            var header = SafeTensorsHeader.Parse(path, json, 8 + n, length - 8 - n);
            return new SafeTensorsFile(path, handle, length, header);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    public TensorInfo Get(string name) =>
        Header.TryGet(name, out var info) ? info : throw new CheckpointFormatException(Path, name, "tensor is not in this file");

    public bool Contains(string name) => Header.TryGet(name, out _);

    /// <summary>Copies a tensor's raw little-endian bytes into <paramref name="destination"/> (exactly its byte length).</summary>
    public void ReadInto(TensorInfo tensor, Span<byte> destination)
    {
        if (destination.Length != tensor.ByteLength)
            throw new InvalidInputException($"destination is {destination.Length} bytes, tensor '{tensor.Name}' has {tensor.ByteLength}");
        ReadExactly(_handle, destination, Header.DataStart + tensor.Begin, Path);
    }

    /// <summary>Reads a byte range of a tensor (for chunked streaming).</summary>
    public void ReadRange(TensorInfo tensor, long offsetInTensor, Span<byte> destination)
    {
        if (offsetInTensor < 0 || offsetInTensor + destination.Length > tensor.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(offsetInTensor), $"range [{offsetInTensor}, {offsetInTensor + destination.Length}) is outside tensor '{tensor.Name}' ({tensor.ByteLength} bytes)");
        ReadExactly(_handle, destination, Header.DataStart + tensor.Begin + offsetInTensor, Path);
    }

    /// <summary>Zero-copy, read-only view of a tensor's bytes; dispose it to unmap and release its pages.</summary>
    public TensorView Map(TensorInfo tensor)
    {
        lock (_gate)
        {
            _mapping ??= MemoryMappedFile.CreateFromFile(_handle, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: true);
        }
        return new TensorView(_mapping, Header.DataStart + tensor.Begin, tensor.ByteLength);
    }

    private static void ReadExactly(SafeFileHandle handle, Span<byte> destination, long fileOffset, string path)
    {
        while (!destination.IsEmpty)
        {
            // pread caps a single call near 2 GiB; loop until the span is filled.
            int chunk = (int)Math.Min(destination.Length, 1 << 30);
            int n = RandomAccess.Read(handle, destination[..chunk], fileOffset);
            if (n <= 0) throw new CheckpointFormatException(path, null, $"file ends early at offset {fileOffset}");
            destination = destination[n..];
            fileOffset += n;
        }
    }

    public void Dispose()
    {
        _mapping?.Dispose();
        _handle.Dispose();
    }
}

/// <summary>A mapped, read-only window onto one tensor's bytes.</summary>
public sealed unsafe class TensorView : IDisposable
{
    private readonly MemoryMappedViewAccessor _accessor;
    private readonly byte* _base;
    private readonly long _length;

    internal TensorView(MemoryMappedFile mapping, long offset, long length)
    {
        _length = length;
        _accessor = mapping.CreateViewAccessor(offset, Math.Max(length, 1), MemoryMappedFileAccess.Read);
        byte* p = null;
        _accessor.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _base = p + _accessor.PointerOffset;
    }

    public long Length => _length;
    public byte* Pointer => _base;

    /// <summary>Part of the bytes as a span.</summary>
    public ReadOnlySpan<byte> Slice(long offset, int length)
    {
        if (offset < 0 || length < 0 || offset + length > _length) throw new ArgumentOutOfRangeException(nameof(offset), $"range [{offset}, {offset + length}) is outside the view ({_length} bytes)");
        return new ReadOnlySpan<byte>(_base + offset, length);
    }

    /// <summary>The bytes as a span (tensors up to 2 GiB; larger ones use <see cref="Pointer"/>).</summary>
    public ReadOnlySpan<byte> Span => new(_base, checked((int)_length));

    public void Dispose()
    {
        _accessor.SafeMemoryMappedViewHandle.ReleasePointer();
        _accessor.Dispose();
    }
}
