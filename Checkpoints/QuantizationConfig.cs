using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace ShardPipe.Checkpoints;

/// <summary>The stored layout of a quantized Linear's weight (which tensors, how codes are packed).</summary>
public enum QuantFormat
{
    /// <summary>AutoGPTQ: qweight [in·bits/32, out] packed along the input, qzeros (zero − 1) packed along the output, scales, g_idx.</summary>
    Gptq,
    /// <summary>AutoAWQ GEMM: qweight [in, out/8] packed along the output in the order 0,2,4,6,1,3,5,7; qzeros likewise; scales.</summary>
    AwqGemm,
    /// <summary>compressed-tensors pack-quantized: weight_packed [out, ⌈in/pf⌉] (code = q + 2^(bits−1)), weight_scale, weight_shape, packed zero points.</summary>
    PackQuantized,
    /// <summary>compressed-tensors int-quantized / naive-quantized: weight as int8 q, weight_scale, weight_zero_point.</summary>
    IntQuantized,
}

/// <summary>
/// A config.json's <c>quantization_config</c>, read and checked as the loaders that write it define it: GPTQ
/// (AutoGPTQ/optimum), AWQ (AutoAWQ GEMM) and compressed-tensors (llm-compressor). Anything else — another
/// quant_method (bitsandbytes, hqq, …) or an option this build cannot run — is a typed error naming config.json and
/// the field, so a quantized checkpoint never loads as freshly initialised weights.
/// </summary>
public sealed record QuantizationConfig
{
    public required string QuantMethod { get; init; }
    public required QuantFormat Format { get; init; }
    public required int Bits { get; init; }
    /// <summary>Inputs per scale group; −1 = one group per output row (per channel).</summary>
    public required int GroupSize { get; init; }
    public required bool Symmetric { get; init; }
    /// <summary>GPTQ act-order: g_idx permutes the groups.</summary>
    public bool DescAct { get; init; }
    /// <summary>Module names (or <c>re:</c> patterns) left in float; for GPTQ/AWQ a substring rule as transformers applies it.</summary>
    public IReadOnlyList<string> Ignore { get; init; } = Array.Empty<string>();
    /// <summary>compressed-tensors <c>targets</c>: class names or <c>re:</c> patterns of module names.</summary>
    public IReadOnlyList<string> Targets { get; init; } = new[] { "Linear" };
    /// <summary>The JSON as given, saved back unchanged.</summary>
    public required JsonObject Json { get; init; }

    /// <summary>The config's quantization, or null when it has none; throws for what cannot be loaded.</summary>
    public static QuantizationConfig? From(PretrainedConfig config)
    {
        if (!config.Values.TryGetPropertyValue("quantization_config", out var node) || node is null) return null;
        string file = config.SourcePath ?? "config.json";
        if (node is not JsonObject q) throw Bad(file, "", "must be an object");
        string method = Str(q, file, "quant_method") ?? throw Bad(file, "quant_method", "is missing");
        return method switch
        {
            "gptq" => Gptq(q, file),
            "awq" => Awq(q, file),
            "compressed-tensors" => CompressedTensors(q, file),
            _ => throw new UnsupportedException($"{file}: quantization_config.quant_method '{method}' is not supported (supported: gptq, awq, compressed-tensors); " +
                                                "refusing to load its packed weights as uninitialised floats"),
        };
    }

    /// <summary>Whether module <paramref name="path"/> of class <paramref name="className"/> is stored quantized.</summary>
    public bool Quantizes(string path, string className, string outputEmbeddingsPath)
    {
        if (Format is QuantFormat.PackQuantized or QuantFormat.IntQuantized)
            return Targets.Any(t => Matches(t, path, className)) && !Ignore.Any(t => Matches(t, path, className));
        // transformers (optimum / AutoAWQ integration) keeps the output head in float and skips modules_to_not_convert by substring.
        return className == "Linear" && path != outputEmbeddingsPath && !Ignore.Any(i => path.Contains(i, StringComparison.Ordinal));
    }

    private static bool Matches(string target, string path, string className)
    {
        if (!target.StartsWith("re:", StringComparison.Ordinal)) return target == path || target == className;
        try { return Regex.IsMatch(path, target[3..], RegexOptions.None, PatternTimeout); }
        catch (RegexMatchTimeoutException) { throw new UnsupportedException($"quantization_config: pattern '{target}' took too long to match '{path}'"); }
    }

    private static readonly TimeSpan PatternTimeout = TimeSpan.FromSeconds(1);

    /// <summary>compressed-tensors' <c>re:</c> entries are Python regular expressions; one .NET cannot compile is the config's fault.</summary>
    private static IReadOnlyList<string> Patterns(IReadOnlyList<string> entries, string file, string field)
    {
        foreach (var e in entries.Where(e => e.StartsWith("re:", StringComparison.Ordinal)))
        {
            try { _ = new Regex(e[3..], RegexOptions.None, PatternTimeout); }
            catch (ArgumentException ex) { throw Bad(file, field, $"has an invalid pattern '{e}': {ex.Message}"); }
        }
        return entries;
    }

    private static QuantizationConfig Gptq(JsonObject q, string file)
    {
        int bits = Int(q, file, "bits") ?? throw Bad(file, "bits", "is missing");
        if (bits is not (2 or 3 or 4 or 8)) throw Unsupported(file, "bits", $"{bits} (GPTQ defines 2, 3, 4 and 8)");
        string fmt = Str(q, file, "checkpoint_format") ?? "gptq";
        if (fmt != "gptq") throw Unsupported(file, "checkpoint_format", $"'{fmt}' (only 'gptq' is read)");
        return new QuantizationConfig
        {
            QuantMethod = "gptq", Format = QuantFormat.Gptq, Bits = bits, GroupSize = ReadGroupSize(q, file, "group_size", 128),
            Symmetric = Bool(q, file, "sym") ?? true, DescAct = Bool(q, file, "desc_act") ?? false,
            Ignore = Strings(q, file, "modules_to_not_convert"), Json = q,
        };
    }

    private static QuantizationConfig Awq(JsonObject q, string file)
    {
        int bits = Int(q, file, "bits") ?? Int(q, file, "w_bit") ?? throw Bad(file, "bits", "is missing");
        if (bits != 4) throw Unsupported(file, "bits", $"{bits} (AWQ GEMM packs 4-bit codes)");
        string version = (Str(q, file, "version") ?? "gemm").ToLowerInvariant();
        if (version != "gemm") throw Unsupported(file, "version", $"'{version}' (only the GEMM layout is read)");
        bool zero = Bool(q, file, "zero_point") ?? true;
        if (!zero) throw Unsupported(file, "zero_point", "false (AWQ GEMM checkpoints store zero points)");
        int gs = ReadGroupSize(q, file, "group_size", 128);
        if (gs <= 0) throw Unsupported(file, "group_size", $"{gs} (AWQ needs a positive group size)");
        return new QuantizationConfig
        {
            QuantMethod = "awq", Format = QuantFormat.AwqGemm, Bits = 4, GroupSize = gs, Symmetric = false,
            Ignore = Strings(q, file, "modules_to_not_convert"), Json = q,
        };
    }

    private static QuantizationConfig CompressedTensors(JsonObject q, string file)
    {
        string format = Str(q, file, "format") ?? throw Bad(file, "format", "is missing");
        var kind = format switch
        {
            "pack-quantized" => QuantFormat.PackQuantized,
            "int-quantized" or "naive-quantized" => QuantFormat.IntQuantized,
            _ => throw Unsupported(file, "format", $"'{format}' (supported: pack-quantized, int-quantized, naive-quantized)"),
        };
        if (q["sparsity_config"] is JsonObject sp && sp.Count > 0) throw Unsupported(file, "sparsity_config", "a sparsity scheme");
        if (q["config_groups"] is not JsonObject groups || groups.Count == 0) throw Bad(file, "config_groups", "must be an object with one group");
        if (groups.Count != 1) throw Unsupported(file, "config_groups", $"{groups.Count} groups (one scheme for all targets is read)");
        var (gname, gnode) = groups.First();
        string at = $"config_groups.{gname}";
        if (gnode is not JsonObject g) throw Bad(file, at, "must be an object");
        if (g["input_activations"] is JsonObject) throw Unsupported(file, at + ".input_activations", "activation quantization (weight-only schemes are read)");
        if (g["weights"] is not JsonObject w) throw Bad(file, at + ".weights", "is missing");
        string type = Str(w, file, "type", at + ".weights") ?? "int";
        if (type != "int") throw Unsupported(file, at + ".weights.type", $"'{type}'");
        int bits = Int(w, file, "num_bits", at + ".weights") ?? throw Bad(file, at + ".weights.num_bits", "is missing");
        if (bits is < 2 or > 8)
            throw Unsupported(file, at + ".weights.num_bits", $"{bits}");
        string strategy = Str(w, file, "strategy", at + ".weights") ?? "tensor";
        int gs = strategy switch
        {
            "group" => Int(w, file, "group_size", at + ".weights") is { } v && v > 0 ? v : throw Bad(file, at + ".weights.group_size", "must be a positive integer for strategy 'group'"),
            "channel" => -1,
            _ => throw Unsupported(file, at + ".weights.strategy", $"'{strategy}' (group and channel are read)"),
        };
        if (w["actorder"] is JsonValue ao && ao.TryGetValue(out string? aos) && aos is not null)
            throw Unsupported(file, at + ".weights.actorder", $"'{aos}'");
        if (Bool(w, file, "dynamic", at + ".weights") == true) throw Unsupported(file, at + ".weights.dynamic", "true");
        return new QuantizationConfig
        {
            QuantMethod = "compressed-tensors", Format = kind, Bits = bits, GroupSize = gs,
            Symmetric = Bool(w, file, "symmetric", at + ".weights") ?? true,
            Targets = g["targets"] is JsonArray ? Patterns(Strings(g, file, "targets", at), file, at + ".targets") : new[] { "Linear" },
            Ignore = Patterns(Strings(q, file, "ignore"), file, "ignore"), Json = q,
        };
    }

    private static int ReadGroupSize(JsonObject q, string file, string key, int fallback)
    {
        int gs = Int(q, file, key) ?? fallback;
        if (gs == 0 || gs < -1) throw Bad(file, key, $"{gs} (a positive group size or -1)");
        return gs;
    }

    private static Exception Bad(string file, string field, string what) =>
        new CheckpointFormatException(file, null, $"quantization_config{(field.Length > 0 ? "." + field : "")} {what}");

    private static Exception Unsupported(string file, string field, string what) =>
        new UnsupportedException($"{file}: quantization_config.{field} {what} is not supported");

    private static string? Str(JsonObject o, string file, string key, string at = "")
    {
        if (!o.TryGetPropertyValue(key, out var n) || n is null) return null;
        return n is JsonValue v && v.TryGetValue(out string? s) ? s : throw Bad(file, Join(at, key), "must be a string");
    }

    private static int? Int(JsonObject o, string file, string key, string at = "")
    {
        if (!o.TryGetPropertyValue(key, out var n) || n is null) return null;
        return n is JsonValue v && v.TryGetValue(out int i) ? i
            : n is JsonValue d && d.TryGetValue(out double x) && x == Math.Floor(x) && Math.Abs(x) < int.MaxValue ? (int)x
            : throw Bad(file, Join(at, key), "must be an integer");
    }

    private static bool? Bool(JsonObject o, string file, string key, string at = "")
    {
        if (!o.TryGetPropertyValue(key, out var n) || n is null) return null;
        return n is JsonValue v && v.TryGetValue(out bool b) ? b : throw Bad(file, Join(at, key), "must be true or false");
    }

    private static IReadOnlyList<string> Strings(JsonObject o, string file, string key, string at = "")
    {
        if (!o.TryGetPropertyValue(key, out var n) || n is null) return Array.Empty<string>();
        if (n is not JsonArray a) throw Bad(file, Join(at, key), "must be a list of strings");
        return a.Select(x => x is JsonValue v && v.TryGetValue(out string? s) ? s : throw Bad(file, Join(at, key), "must be a list of strings")).ToList();
    }

    private static string Join(string at, string key) => at.Length == 0 ? key : at + "." + key;
}
