using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ShardPipe.Checkpoints;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Core;

/// <summary>
/// Tensor storage and managed memory without copies: <see cref="Of"/> views a CPU tensor's bytes as
/// <see cref="ReadOnlyMemory{T}"/> (the view keeps the storage alive), and <see cref="Over"/> builds a tensor over
/// a range of a byte array, pinned for as long as the tensor's storage lives (libtorch's <c>from_blob</c> with a
/// deleter that unpins).
/// </summary>
public static class TensorMemory
{
    /// <summary>The address of a CPU tensor's first byte (the caller keeps the tensor alive and contiguous while it uses it): what the kernels read and write through.</summary>
    internal static unsafe void* Pointer(Tensor t) => Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    /// <summary>The bytes of <paramref name="t"/> (moved to CPU and made contiguous first if needed; no copy when it already is).</summary>
    public static ReadOnlyMemory<byte> Of(Tensor t)
    {
        var cpu = t.cpu().contiguous();
        if (ReferenceEquals(cpu, t)) cpu = t.detach(); // a handle of our own on the same storage
        cpu.DetachFromDisposeScope(); // the view outlives the caller's scope: it travels in a message
        return new Manager(cpu).Memory;
    }

    /// <summary>
    /// A tensor of <paramref name="dtype"/> and <paramref name="shape"/> over <paramref name="length"/> bytes of
    /// <paramref name="array"/> at <paramref name="offset"/>, sharing them; null when the bytes are not aligned to
    /// the element size (the caller copies instead).
    /// </summary>
    public static Tensor? Over(byte[] array, int offset, int length, ScalarType dtype, long[] shape)
    {
        int elem = DTypes.Size(TorchRuntime.ToDType(dtype));
        if (length == 0 || offset % elem != 0 || offset < 0 || (long)offset + length > array.Length) return null;
        var handle = GCHandle.Alloc(array, GCHandleType.Pinned);
        IntPtr data = handle.AddrOfPinnedObject() + offset;
        if (data % elem != 0 || !Pins.TryAdd(data, handle))
        {
            handle.Free();
            return null;
        }
        IntPtr native;
        unsafe
        {
            fixed (long* sizes = shape)
                native = THSTensor_new(data, Unpin, (IntPtr)sizes, shape.Length, (sbyte)dtype, (sbyte)dtype, 0, 0, false);
        }
        if (native == IntPtr.Zero)
        {
            if (Pins.TryRemove(data, out var h)) h.Free();
            return null;
        }
        return Tensor.UnsafeCreateTensor(native);
    }

    /// <summary>
    /// A tensor over native memory the caller owns and keeps alive longer than the tensor (a mapped file): no copy,
    /// nothing freed when the tensor goes. The caller checks alignment.
    /// </summary>
    public static Tensor OverNative(IntPtr data, ScalarType dtype, long[] shape)
    {
        IntPtr native;
        unsafe
        {
            fixed (long* sizes = shape)
                native = THSTensor_new(data, Keep, (IntPtr)sizes, shape.Length, (sbyte)dtype, (sbyte)dtype, 0, 0, false);
        }
        if (native == IntPtr.Zero) throw new LoadingException($"libtorch could not make a tensor over native memory ({string.Join("x", shape)} {dtype})");
        return Tensor.UnsafeCreateTensor(native);
    }

    private static readonly Deleter Keep = _ => { };

    private static readonly ConcurrentDictionary<IntPtr, GCHandle> Pins = new();

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate void Deleter(IntPtr data);

    private static readonly Deleter Unpin = data =>
    {
        if (Pins.TryRemove(data, out var h)) h.Free();
    };

    // LibTorchSharp's from_blob: (data, deleter, sizes, ndim, element type of data, dtype of the tensor, device type, device index, requires_grad).
    [DllImport("LibTorchSharp")]
    private static extern IntPtr THSTensor_new(IntPtr data, Deleter deleter, IntPtr sizes, int ndim, sbyte scalarType, sbyte dtype, int deviceType, int deviceIndex, [MarshalAs(UnmanagedType.U1)] bool requiresGrad);

    /// <summary>Memory over a tensor's storage; holds the tensor (and so its storage) for as long as the memory is reachable.</summary>
    private sealed unsafe class Manager : MemoryManager<byte>
    {
        private readonly Tensor _tensor;
        private readonly IntPtr _data;
        private readonly int _length;

        public Manager(Tensor t)
        {
            _tensor = t;
            var span = t.bytes;
            _length = span.Length;
            _data = (IntPtr)Unsafe.AsPointer(ref MemoryMarshal.GetReference(span));
            if (_length > 0) GC.AddMemoryPressure(_length); // native bytes the GC would not otherwise see
        }

        public override Span<byte> GetSpan() => new((void*)_data, _length);
        public override MemoryHandle Pin(int elementIndex = 0) => new((byte*)_data + elementIndex, default, this);
        public override void Unpin() { }
        protected override void Dispose(bool disposing) { }

        // The memory is only read while a ReadOnlyMemory over it is reachable (the frame writer keeps it, ToTensor
        // keeps its payload alive), so freeing the tensor once this manager is unreachable is safe.
#pragma warning disable CA2015
        ~Manager()
        {
            _tensor.Dispose();
            if (_length > 0) GC.RemoveMemoryPressure(_length);
        }
#pragma warning restore CA2015
    }
}
