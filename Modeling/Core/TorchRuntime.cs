using System.Runtime.InteropServices;
using ShardPipe.Checkpoints;
using ShardPipe.Placement;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Core;

/// <summary>Process-wide TorchSharp setup and the dtype/device vocabulary shared by the model code.</summary>
public static class TorchRuntime
{
    private static int _initialised;

    /// <summary>
    /// Call before the first tensor allocation. Asks libtorch's CPU allocator for transparent huge pages on
    /// large tensors (THP is in madvise mode on this OS; 4 KiB first-touch faults otherwise dominate loading), and
    /// libgomp for passive OpenMP threads (<see cref="OpenMpWaitPolicy"/>).
    /// The variables must be in the native environment, which .NET's SetEnvironmentVariable does not touch.
    /// </summary>
    public static void Initialise()
    {
        if (Interlocked.Exchange(ref _initialised, 1) == 1) return;
        if (OperatingSystem.IsLinux() && Environment.GetEnvironmentVariable("THP_MEM_ALLOC_ENABLE") is null)
            setenv("THP_MEM_ALLOC_ENABLE", "1", 0);
        OpenMpWaitPolicy.Apply(); // before libtorch (and its libgomp) loads, where the host's Main has not already
        torch.InitializeDeviceType(DeviceType.CPU);
    }

    /// <summary>Sets <paramref name="name"/> in the C environment, which native libraries read (.NET's
    /// SetEnvironmentVariable does not touch it); <paramref name="overwrite"/> 0 keeps a value already there. 0 on success.</summary>
    [DllImport("libc", CharSet = CharSet.Ansi)]
    internal static extern int setenv(string name, string value, int overwrite);

    public static ScalarType ToScalarType(DType dtype) => dtype switch
    {
        DType.F64 => ScalarType.Float64,
        DType.F32 => ScalarType.Float32,
        DType.F16 => ScalarType.Float16,
        DType.BF16 => ScalarType.BFloat16,
        DType.I64 => ScalarType.Int64,
        DType.I32 => ScalarType.Int32,
        DType.I16 => ScalarType.Int16,
        DType.I8 => ScalarType.Int8,
        DType.U8 => ScalarType.Byte,
        DType.BOOL => ScalarType.Bool,
        _ => throw new UnsupportedException($"dtype {DTypes.Code(dtype)} has no TorchSharp counterpart"),
    };

    public static DType ToDType(ScalarType type) => type switch
    {
        ScalarType.Float64 => DType.F64,
        ScalarType.Float32 => DType.F32,
        ScalarType.Float16 => DType.F16,
        ScalarType.BFloat16 => DType.BF16,
        ScalarType.Int64 => DType.I64,
        ScalarType.Int32 => DType.I32,
        ScalarType.Int16 => DType.I16,
        ScalarType.Int8 => DType.I8,
        ScalarType.Byte => DType.U8,
        ScalarType.Bool => DType.BOOL,
        _ => throw new UnsupportedException($"scalar type {type}"),
    };

    /// <summary>Parses "float32", "torch.float16", "bf16" … into a floating dtype.</summary>
    public static DType ParseFloatDType(string name)
    {
        if (!DTypes.TryParseTorchName(name, out var dt) || !DTypes.IsFloating(dt) || dt is DType.F8_E4M3 or DType.F8_E5M2)
            throw new InvalidInputException($"'{name}' is not a supported model dtype (float32, float16, bfloat16, float64, or auto)");
        return dt;
    }

    /// <summary>Whether this build can compute on CUDA devices (TorchSharp-cpu cannot).</summary>
    public static bool HasCuda
    {
        get
        {
            Initialise();
            return torch.cuda.is_available();
        }
    }

    /// <summary>Why <paramref name="device"/> cannot compute in this process, or null when it can.</summary>
    public static string? Unusable(DeviceId device) => device.Kind switch
    {
        "cpu" or "disk" => null, // disk: computes on the CPU, weights read from disk per call
        "cuda" when HasCuda => null,
        "cuda" => $"{device.Kind}:{device.Index} requested, but this build has no CUDA",
        _ => $"device '{device}' is not a device this build can compute on (cpu, disk, cuda:N)",
    };

    /// <summary>A planned device (cpu, cuda:N) as a TorchSharp device; a device this build cannot use is refused, named.</summary>
    public static Device ToDevice(DeviceId device) =>
        Unusable(device) is { } why ? throw new UnsupportedException(why) : device.Kind is "cpu" or "disk" ? CPU : new Device($"cuda:{device.Index}");
}
