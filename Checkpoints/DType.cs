namespace ShardPipe.Checkpoints;

/// <summary>The element types a safetensors file may hold, named by their safetensors codes.</summary>
public enum DType
{
    F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2,
}

/// <summary>The one place that knows element sizes and the names dtypes go by (safetensors code, torch name).</summary>
public static class DTypes
{
    /// <summary>Bytes per element; every size computation in ShardPipe goes through here.</summary>
    public static int Size(DType dtype) => dtype switch
    {
        DType.F64 or DType.I64 => 8,
        DType.F32 or DType.I32 => 4,
        DType.F16 or DType.BF16 or DType.I16 => 2,
        _ => 1,
    };

    public static bool IsFloating(DType dtype) => dtype is DType.F64 or DType.F32 or DType.F16 or DType.BF16
        or DType.F8_E4M3 or DType.F8_E5M2;

    public static string Code(DType dtype) => dtype.ToString();

    public static bool TryParseCode(string code, out DType dtype)
    {
        switch (code)
        {
            case "F64": dtype = DType.F64; return true;
            case "F32": dtype = DType.F32; return true;
            case "F16": dtype = DType.F16; return true;
            case "BF16": dtype = DType.BF16; return true;
            case "I64": dtype = DType.I64; return true;
            case "I32": dtype = DType.I32; return true;
            case "I16": dtype = DType.I16; return true;
            case "I8": dtype = DType.I8; return true;
            case "U8": dtype = DType.U8; return true;
            case "BOOL": dtype = DType.BOOL; return true;
            case "F8_E4M3": dtype = DType.F8_E4M3; return true;
            case "F8_E5M2": dtype = DType.F8_E5M2; return true;
            default: dtype = default; return false;
        }
    }

    /// <summary>torch's name for the dtype, as config.json's <c>torch_dtype</c> writes it.</summary>
    public static string TorchName(DType dtype) => dtype switch
    {
        DType.F64 => "float64",
        DType.F32 => "float32",
        DType.F16 => "float16",
        DType.BF16 => "bfloat16",
        DType.I64 => "int64",
        DType.I32 => "int32",
        DType.I16 => "int16",
        DType.I8 => "int8",
        DType.U8 => "uint8",
        DType.BOOL => "bool",
        DType.F8_E4M3 => "float8_e4m3fn",
        DType.F8_E5M2 => "float8_e5m2",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    /// <summary>Parses a torch dtype name ("float32", "torch.float16", "bf16", "fp32" …).</summary>
    public static bool TryParseTorchName(string name, out DType dtype)
    {
        string n = name.Trim().ToLowerInvariant();
        if (n.StartsWith("torch.", StringComparison.Ordinal)) n = n[6..];
        switch (n)
        {
            case "float64": case "double": case "fp64": dtype = DType.F64; return true;
            case "float32": case "float": case "fp32": dtype = DType.F32; return true;
            case "float16": case "half": case "fp16": dtype = DType.F16; return true;
            case "bfloat16": case "bf16": dtype = DType.BF16; return true;
            case "int64": case "long": dtype = DType.I64; return true;
            case "int32": case "int": dtype = DType.I32; return true;
            case "int16": case "short": dtype = DType.I16; return true;
            case "int8": dtype = DType.I8; return true;
            case "uint8": dtype = DType.U8; return true;
            case "bool": dtype = DType.BOOL; return true;
            case "float8_e4m3fn": dtype = DType.F8_E4M3; return true;
            case "float8_e5m2": dtype = DType.F8_E5M2; return true;
            default: dtype = default; return false;
        }
    }

    /// <summary>
    /// The order in which the safetensors library lays tensors out in a file: descending dtype rank (its
    /// Rust enum order), then by name.
    /// </summary>
    public static int SafetensorsRank(DType dtype) => dtype switch
    {
        DType.BOOL => 0,
        DType.U8 => 1,
        DType.I8 => 2,
        DType.F8_E5M2 => 3,
        DType.F8_E4M3 => 4,
        DType.I16 => 5,
        DType.F16 => 7,
        DType.BF16 => 8,
        DType.I32 => 9,
        DType.F32 => 11,
        DType.F64 => 12,
        DType.I64 => 13,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };
}
