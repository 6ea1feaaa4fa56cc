using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Loading;

/// <summary>
/// <c>from_pretrained</c>: config → module tree on the meta device → each tensor materialised once, straight
/// into its final memory at the target dtype and device (a checkpoint tensor already in that dtype is read
/// from the file directly into the parameter's storage; others pass through one temporary of their own size).
/// </summary>
public static class PreTrainedModel
{
    public static CausalLMModel FromPretrained(string? pathOrRepoId, FromPretrainedOptions? options = null) =>
        FromPretrained(pathOrRepoId, options ?? new FromPretrainedOptions(), out _);

    public static CausalLMModel FromPretrained(string? pathOrRepoId, FromPretrainedOptions options, out LoadingInfo info)
    {
        options = QuantizeOnLoad.Map(options);
        TorchRuntime.Initialise();
        string? folder = pathOrRepoId is null || options.Fetcher is not null && options.Config is not null ? null : ModelLocator.Locate(pathOrRepoId, new LocateOptions
        {
            Revision = options.Revision, Subfolder = options.Subfolder, CacheDir = options.CacheDir,
        });
        var config = options.Config?.Clone() ?? (folder is not null ? PretrainedConfig.FromFolder(folder)
            : throw new InvalidInputException("from_pretrained needs a model folder, a repo id, or a config"));
        if (options.ConfigOverrides is not null)
            foreach (var (k, v) in options.ConfigOverrides) config.Set(k, v?.DeepClone());

        if (!options.UseSafetensors && options.StateDict is null && options.Fetcher is null && folder is not null) RefusePickle(folder, options.Variant);
        using var checkpoint = options.StateDict is null && options.Fetcher is null
            ? (folder is not null ? Checkpoint.Open(folder, options.Variant) : throw new InvalidInputException("no weights: give a folder or a state_dict"))
            : null;
        var source = options.StateDict is not null ? StateSource.FromTensors(options.StateDict)
            : options.Fetcher is not null ? StateSource.FromFetcher(options.Fetcher)
            : StateSource.FromCheckpoint(checkpoint!);

        DType dtype = ResolveDType(options.DType, config, source);
        var model = AutoModel.FromConfig(config);
        model.Attention = options.AttnImplementation;
        model.Logger = options.Logger;
        model.GenerationConfig = LoadGenerationConfig(folder, config);

        var deviceMap = options.DeviceMapDict is not null ? DeviceMapSpec.FromDict(options.DeviceMapDict) : DeviceMapSpec.Parse(options.DeviceMap ?? "cpu");
        if (deviceMap.IsStrategy) deviceMap = PlanDeviceMap(model, deviceMap, dtype, options);
        deviceMap.Validate(model.ToPlacementTree());
        // Disk-mapped modules run on the CPU with their parameters read in for each call (DiskOffload); buffers stay in memory.
        var diskPrefixes = deviceMap.Entries.Where(e => e.Value.Kind == "disk").Select(e => e.Key).ToList();
        if (diskPrefixes.Count > 0 && (folder is null || options.StateDict is not null || options.Fetcher is not null))
            throw new UnsupportedException("device_map sends modules to disk, which needs weights from a checkpoint folder (not a state_dict or streamed slice)");
        var buffers = model.NamedBuffers().Select(b => b.Key).ToHashSet(StringComparer.Ordinal);
        bool OnDisk(string key) => diskPrefixes.Count > 0 && !buffers.Contains(key) && ModulePath.CoveredByAny(diskPrefixes, key);
        var devices = deviceMap.Devices.ToDictionary(d => d, d => d.Kind == "disk" ? CPU : TorchRuntime.ToDevice(d));
        Device DeviceOf(string path) => devices[deviceMap.DeviceFor(path) ?? deviceMap.Entries[0].Value];
        var loadOptions = diskPrefixes.Count == 0 ? options : options with { IncludeKey = key => !OnDisk(key) && (options.IncludeKey?.Invoke(key) ?? true) };
        info = StateLoader.Load(model, source, dtype, DeviceOf, loadOptions);
        if (options.Quantize is { } method)
        {
            try { Quantization.RoundToNearest.QuantizeModel(model, method, options.QuantizeGroupSize, dtype, options.QuantizeHead); }
            catch
            {
                model.Release();
                throw;
            }
        }
        if (diskPrefixes.Count > 0)
        {
            // Quantized Linears on disk (from the checkpoint or quantized on load) are kept there packed (PackedOffload).
            var quantize = options.Quantize is { } q ? new QuantizeOnLoadRequest(q, options.QuantizeGroupSize, options.QuantizeHead) : null;
            try { model.Offload = DiskOffload.Build(model, folder!, options.Variant, diskPrefixes, dtype, options.OffloadFolder, options.IncludeKey, quantize); }
            catch
            {
                model.Release();
                throw;
            }
            model.Offload.Prefetch = options.OffloadPrefetch ?? DiskOffload.PrefetchByDefault;
        }
        model.DType = TorchRuntime.ToScalarType(dtype);
        model.HfDeviceMap = deviceMap.Entries.Select(e => new KeyValuePair<string, string>(e.Key, HfDeviceName(e.Value.ToString()))).ToList();
        model.EmbedDevice = DeviceOf(model.InputEmbeddingsPath);
        model.HeadDevice = DeviceOf(model.OutputEmbeddingsPath);
        var layerDevices = Enumerable.Range(0, model.NumLayers).Select(i => DeviceOf(model.LayerPath(i))).ToArray();
        model.LayerDevice = i => layerDevices[i];
        model.SourceFolder = folder;
        return model;
    }

    /// <summary>
    /// <c>use_safetensors=False</c> asks for PyTorch's pickled weights (<c>pytorch_model.bin</c>), which ShardPipe does not
    /// read: as Hugging Face, a folder without them is an error naming it; one with them is refused as unsupported.
    /// </summary>
    private static void RefusePickle(string folder, string? variant)
    {
        string suffix = variant is null ? "" : $".{CheckpointNames.CheckVariant(variant)}";
        string bin = $"pytorch_model{suffix}.bin", index = $"pytorch_model.bin.index{suffix}.json";
        if (File.Exists(Path.Combine(folder, bin)) || File.Exists(Path.Combine(folder, index)))
            throw new UnsupportedException($"{folder}: use_safetensors=False selects {bin}, a pickled PyTorch checkpoint, which ShardPipe does not read; convert it to safetensors or leave use_safetensors on");
        throw new CheckpointNotFoundException($"{folder} does not appear to have a file named {bin} or {index} (use_safetensors=False; it has safetensors weights only)",
            new[] { Path.Combine(folder, bin), Path.Combine(folder, index) });
    }

    /// <summary>
    /// device_map="auto" and friends, as from_pretrained does it: the planner over the model's meta tree with the
    /// model's no-split classes; budgets default to the CPU's available memory (no GPUs in this build).
    /// </summary>
    private static DeviceMapSpec PlanDeviceMap(CausalLMModel model, DeviceMapSpec strategy, DType dtype, FromPretrainedOptions options)
    {
        // Quantize on load: the Linears it packs are counted packed (on the CPU and on disk alike), as a cluster plan counts them.
        var tree = options.Quantize is { } method ? Quantization.RoundToNearest.PlanTree(model, method, options.QuantizeGroupSize, options.QuantizeHead) : model.ToPlacementTree();
        var plan = DevicePlanner.Plan(new PlanRequest
        {
            Model = tree,
            DeviceMap = strategy,
            MaxMemory = options.MaxMemory is { } mm ? ShardPipe.Placement.MaxMemory.Parse(mm) : null,
            NoSplitModuleClasses = options.NoSplitModuleClasses ?? model.NoSplitModules,
            DType = dtype,
        });
        return DeviceMapSpec.FromEntries(plan.DeviceMap);
    }

    /// <summary>Device names as hf_device_map writes them: GPU index as an int, else "cpu"/"disk".</summary>
    public static string HfDeviceName(string device) =>
        device.StartsWith("cuda:", StringComparison.Ordinal) ? device[5..] : device;

    /// <summary>Explicit dtype, or "auto": config torch_dtype, else the first floating tensor's; default float32.</summary>
    internal static DType ResolveDType(string? requested, PretrainedConfig config, StateSource source) =>
        ResolveDType(requested, config, source.DTypesInOrder());

    public static DType ResolveDType(string? requested, PretrainedConfig config, IEnumerable<DType> storedDTypes)
    {
        if (requested is null) return DType.F32;
        if (requested != "auto") return TorchRuntime.ParseFloatDType(requested);
        if (config.TorchDtype is { } td && td != "auto" && DTypes.TryParseTorchName(td, out var fromConfig) && DTypes.IsFloating(fromConfig))
            return fromConfig;
        foreach (var dt in storedDTypes)
            if (DTypes.IsFloating(dt)) return dt;
        return DType.F32;
    }

    /// <summary>A generation_config.json's text: its object, or null when it holds no object (then the config's ids are used).</summary>
    public static JsonObject? ParseGenerationConfig(string path, string text)
    {
        return StrictJson.Parse(path, text) as JsonObject;
    }

    public static JsonObject LoadGenerationConfig(string? folder, PretrainedConfig config)
    {
        if (folder is not null)
        {
            string path = CheckpointFiles.Resolve(folder, CheckpointNames.GenerationConfig); // the shards' symlink rule
            if (File.Exists(path) && ParseGenerationConfig(path, File.ReadAllText(path)) is { } o) return o;
        }
        var g = new JsonObject();
        foreach (var k in new[] { "bos_token_id", "eos_token_id", "pad_token_id" })
            if (config.Values[k] is { } v) g[k] = v.DeepClone();
        return g;
    }

    /// <summary>
    /// <c>save_pretrained</c>: config.json (with torch_dtype), generation_config.json, and the state dict as
    /// safetensors, sharded greedily in registration order; a tied weight is saved once, under its first name.
    /// </summary>
    public static IReadOnlyList<string> SavePretrained(CausalLMModel model, string folder, SaveOptions? options = null)
    {
        options ??= new SaveOptions();
        Directory.CreateDirectory(folder);
        DType? castTo = options.DType is { } d && d != "auto" ? TorchRuntime.ParseFloatDType(d) : null; // auto keeps each tensor's dtype
        var seen = new HashSet<TensorSlot>(ReferenceEqualityComparer.Instance);
        var sources = new List<Checkpoints.SafeTensors.TensorSource>();
        DType? savedFloat = null;
        JsonObject? quantization = null;
        if (options.StateDict is not null)
        {
            foreach (var (key, t) in options.StateDict)
                sources.Add(SourceOf(key, t, castTo, ref savedFloat));
        }
        else
        {
            // A packed Linear is written as compressed-tensors pack-quantized; its bias and every other tensor as usual.
            var packed = Quantization.QuantizedLinears.Of(model).ToDictionary(l => l.Path, l => l.Linear.Quantized!.Packed!, StringComparer.Ordinal);
            quantization = Quantization.CompressedTensorsConfig.ForModel(model);
            bool symmetric = packed.Values.All(w => w.Zeros is null);
            foreach (var (key, slot) in model.StateDictSlots())
            {
                if (!seen.Add(slot)) continue;
                string parent = ModulePath.Parent(key);
                if (!packed.TryGetValue(parent, out var w) || key.EndsWith(".bias", StringComparison.Ordinal))
                    sources.Add(SourceOf(key, slot.Tensor, castTo, ref savedFloat));
                else if (key.EndsWith(".weight_packed", StringComparison.Ordinal))
                    sources.AddRange(Quantization.CompressedTensorsConfig.Tensors(parent, w, castTo ?? TorchRuntime.ToDType(model.DType), symmetric).ToList());
            }
        }
        var config = model.Config.Clone();
        config.Set("architectures", new JsonArray(model.ClassName));
        config.Set("torch_dtype", DTypes.TorchName(savedFloat ?? TorchRuntime.ToDType(model.DType)));
        config.Values.Remove("quantization_config");
        if (quantization is not null) config.Set("quantization_config", quantization);
        config.Save(Path.Combine(folder, CheckpointNames.Config));
        File.WriteAllText(Path.Combine(folder, CheckpointNames.GenerationConfig),
            model.GenerationConfig.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");
        var files = ShardedWriter.Save(folder, sources, ByteSize.Parse(options.MaxShardSize), options.Variant);
        return files.Prepend(CheckpointNames.GenerationConfig).Prepend(CheckpointNames.Config).ToList();
    }

    private static Checkpoints.SafeTensors.TensorSource SourceOf(string key, Tensor t, DType? castTo, ref DType? savedFloat)
    {
        var dt = TorchRuntime.ToDType(t.dtype);
        if (castTo is { } c && DTypes.IsFloating(dt)) dt = c;
        if (DTypes.IsFloating(dt)) savedFloat ??= dt;
        var target = dt;
        return new Checkpoints.SafeTensors.TensorSource(key, dt, t.shape, dst =>
        {
            using var cpu = t.to(TorchRuntime.ToScalarType(target)).cpu().contiguous();
            cpu.bytes.CopyTo(dst);
        });
    }
}

/// <summary>The arguments of <c>save_pretrained</c>.</summary>
public sealed record SaveOptions
{
    public string MaxShardSize { get; init; } = ShardedWriter.DefaultMaxShardSize;
    public string? Variant { get; init; }
    /// <summary>Cast floating tensors to this dtype on save (the stored dtype is kept otherwise).</summary>
    public string? DType { get; init; }
    /// <summary>Save these tensors instead of the model's own state dict.</summary>
    public IReadOnlyDictionary<string, Tensor>? StateDict { get; init; }
}
