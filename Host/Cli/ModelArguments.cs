using System.CommandLine;
using System.Globalization;
using Microsoft.Extensions.Logging;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;

namespace ShardPipe.Host.Cli;

/// <summary>The options every model-running command shares (model, variant, dtype, device map …) and how they become <see cref="FromPretrainedOptions"/>.</summary>
public sealed class ModelArguments
{
    public Option<string> Model { get; } = CommonOptions.Model();
    public Option<string?> Variant { get; } = CommonOptions.Variant();
    public Option<string?> Revision { get; } = CommonOptions.Revision();
    public Option<string?> Subfolder { get; } = CommonOptions.Subfolder();
    public Option<string?> DType { get; } = new("--dtype") { Description = "float32 (default), float16, bfloat16, or auto (config torch_dtype)" };
    public Option<string?> DeviceMap { get; } = new("--device-map") { Description = "auto, balanced, balanced_low_0, sequential, cpu, cuda:N, N, or a JSON object of module prefix -> device (cpu, disk, …)" };
    public Option<string?> MaxMemory { get; } = new("--max-memory") { Description = "Budgets for auto/balanced/sequential, e.g. \"0=10GiB,cpu=30GiB\"" };
    public Option<string?> Cluster { get; } = new("--cluster") { Description = "Run on a cluster: embedded:N (N nodes in this process) or HOST:PORT; without it, in this process" };
    public Option<string?> Nodes { get; } = new("--nodes") { Description = "Embedded nodes' devices and budgets, e.g. \"w1/cpu=2GiB,w2/cpu=2GiB\"" };
    public Option<string> Attn { get; } = new("--attn-implementation") { Description = "sdpa (default) or eager", DefaultValueFactory = _ => "sdpa" };
    public Option<string?> OffloadFolder { get; } = new("--offload-folder") { Description = "Folder for weights of disk-mapped modules that must be converted to the load dtype (offload_folder)" };
    public Option<bool> OffloadStateDict { get; } = new("--offload-state-dict") { Description = "HF's offload_state_dict (the loader never holds more than one tensor beyond its budget anyway)" };
    public Option<bool> OffloadBuffers { get; } = new("--offload-buffers") { Description = "HF's offload_buffers" };
    public Option<string?> Quantize { get; } = CommonOptions.Quantize();
    public Option<int> QuantizeGroupSize { get; } = CommonOptions.QuantizeGroupSize();
    public Option<bool> QuantizeHead { get; } = CommonOptions.QuantizeHead();

    public void AddTo(Command command)
    {
        foreach (var o in new Option[] { Model, Variant, Revision, Subfolder, DType, DeviceMap, MaxMemory, Cluster, Nodes, Attn, OffloadFolder, OffloadStateDict, OffloadBuffers, Quantize, QuantizeGroupSize, QuantizeHead })
            command.Options.Add(o);
    }

    public FromPretrainedOptions Options(ParseResult parse, ILogger log) => new()
    {
        Variant = parse.GetValue(Variant),
        Revision = parse.GetValue(Revision),
        Subfolder = parse.GetValue(Subfolder),
        DType = parse.GetValue(DType),
        DeviceMap = parse.GetValue(DeviceMap),
        MaxMemory = parse.GetValue(MaxMemory),
        OffloadFolder = parse.GetValue(OffloadFolder),
        OffloadStateDict = parse.GetValue(OffloadStateDict),
        OffloadBuffers = parse.GetValue(OffloadBuffers),
        Quantize = parse.GetValue(Quantize),
        QuantizeGroupSize = parse.GetValue(QuantizeGroupSize),
        QuantizeHead = parse.GetValue(QuantizeHead),
        AttnImplementation = parse.GetValue(Attn) switch
        {
            "sdpa" => AttnImplementation.Sdpa,
            "eager" => AttnImplementation.Eager,
            var other => throw new InvalidInputException($"--attn-implementation '{other}': use sdpa or eager"),
        },
        Logger = log,
    };

    /// <summary>The cluster load request these options describe (balanced is the cluster default).</summary>
    public ShardPipe.Messages.LoadModel LoadRequest(ParseResult parse)
    {
        // --quantize on a cluster: each worker packs its slice as it loads it; the request is checked here before it goes out.
        ShardPipe.Messages.QuantizeRequest? quantize = null;
        if (parse.GetValue(Quantize) is { } q)
        {
            ShardPipe.Modeling.Quantization.RoundToNearest.Check(q, parse.GetValue(QuantizeGroupSize));
            quantize = new(q, parse.GetValue(QuantizeGroupSize), parse.GetValue(QuantizeHead));
        }
        return new(Guid.NewGuid().ToString("N"),
            ShardPipe.Checkpoints.ModelLocator.Locate(parse.GetValue(Model)!, new ShardPipe.Checkpoints.LocateOptions { Revision = parse.GetValue(Revision), Subfolder = parse.GetValue(Subfolder) }),
            parse.GetValue(Variant), parse.GetValue(DType), parse.GetValue(DeviceMap) ?? "balanced", parse.GetValue(MaxMemory), null, Quantize: quantize);
    }

    /// <summary>Parses "1,2,3;4,5,6" into rows; every row must have the same length.</summary>
    public static long[][] ParseRows(string text, string option)
    {
        var rows = text.Split(';', StringSplitOptions.TrimEntries).Select(r =>
            r.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(v =>
                long.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out long x) ? x
                    : throw new InvalidInputException($"{option}: '{v}' is not an integer")).ToArray()).ToArray();
        if (rows.Length == 0 || rows[0].Length == 0) throw new InvalidInputException($"{option} is empty");
        if (rows.Any(r => r.Length != rows[0].Length))
            throw new InvalidInputException($"{option}: rows have different lengths ({string.Join(", ", rows.Select(r => r.Length))}); left-pad them and pass --attention-mask");
        return rows;
    }

    /// <summary>Checks that ids are inside the vocabulary and masks/positions match the ids' shape.</summary>
    public static void ValidateInputs(CausalLMModel model, long[][] ids, long[][]? mask, long[][]? positions)
    {
        long maxPositions = model.Config.GetLongOrNull("max_position_embeddings") ?? model.Config.GetLongOrNull("n_positions") ?? long.MaxValue;
        if (ids[0].Length > maxPositions)
            throw new InvalidInputException($"--input-ids: the prompt has {ids[0].Length} tokens; the model takes at most {maxPositions} positions");
        foreach (var r in ids)
            foreach (var id in r)
                if (id < 0 || id >= model.VocabSize)
                    throw new InvalidInputException($"--input-ids: token id {id} is outside the vocabulary (0..{model.VocabSize - 1})");
        foreach (var (rows, name) in new[] { (mask, "--attention-mask"), (positions, "--position-ids") })
            if (rows is not null && (rows.Length != ids.Length || rows[0].Length != ids[0].Length))
                throw new InvalidInputException($"{name} is {rows.Length}x{rows[0].Length} but --input-ids is {ids.Length}x{ids[0].Length}");
        if (mask is not null && mask.Any(r => r.Any(v => v is not (0 or 1))))
            throw new InvalidInputException("--attention-mask may hold only 0 and 1");
    }
}
