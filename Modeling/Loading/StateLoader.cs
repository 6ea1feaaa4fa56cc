using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Loading;

/// <summary>
/// Matches checkpoint keys to the model's state dict the way <c>_load_pretrained_model</c> does (legacy
/// gamma/beta names, base-model prefix added or removed, tied weights filled from whichever side is present),
/// then materialises every slot once.
/// </summary>
internal static class StateLoader
{
    /// <param name="deviceOf">The device of a module path (its closest mapped ancestor's).</param>
    public static LoadingInfo Load(CausalLMModel model, StateSource source, DType dtype, Func<string, Device> deviceOf, FromPretrainedOptions options)
    {
        var log = options.Logger;
        string prefix = model.BaseModelPrefix + ".";
        var modelKeys = model.StateDictSlots().ToList();
        var modelKeySet = modelKeys.Select(k => k.Key).ToHashSet(StringComparer.Ordinal);

        // Checkpoint key -> model key.
        var renamed = source.Keys.ToDictionary(k => k, FixLegacyKey, StringComparer.Ordinal);
        bool hasPrefix = renamed.Values.Any(k => k.StartsWith(prefix, StringComparison.Ordinal));
        bool expectsPrefix = modelKeySet.Any(k => k.StartsWith(prefix, StringComparison.Ordinal));
        bool addPrefix = !hasPrefix && expectsPrefix; // a base-model checkpoint loaded into a head model
        var toModel = new Dictionary<string, string>(StringComparer.Ordinal); // model key -> checkpoint key
        var unexpected = new List<string>();
        foreach (var (ckptKey, fixedKey) in renamed)
        {
            string modelKey = addPrefix && !modelKeySet.Contains(fixedKey) ? prefix + fixedKey : fixedKey;
            if (modelKeySet.Contains(modelKey)) toModel.TryAdd(modelKey, ckptKey);
            else unexpected.Add(ckptKey);
        }
        if (options.IncludeKey is { } inc) unexpected.RemoveAll(k => !inc(k));
        // Non-persistent buffers found in a checkpoint are not unexpected (as 4.38 drops model buffers from the list).
        var bufferNames = model.NamedBuffers().Select(b => b.Key).ToHashSet(StringComparer.Ordinal);
        unexpected.RemoveAll(k => bufferNames.Contains(k) || (addPrefix && bufferNames.Contains(prefix + k)));

        // One job per distinct slot: its names in order; the first present in the checkpoint fills it.
        var slotNames = new Dictionary<TensorSlot, List<string>>(ReferenceEqualityComparer.Instance);
        foreach (var (key, slot) in modelKeys)
        {
            if (!slotNames.TryGetValue(slot, out var names)) slotNames[slot] = names = new List<string>();
            names.Add(key);
        }
        var owners = OwnerClasses(model);
        var reusable = new Dictionary<string, TensorSlot>(StringComparer.Ordinal);
        if (options.Reuse is { } reuse)
            foreach (var (key, slot) in reuse.StateDictSlots().Concat(reuse.NamedBuffers()))
                if (slot.IsMaterialised) reusable.TryAdd(key, slot);
        // A tensor the previous model already holds as this slot needs it moves over instead of being read again.
        bool Reused(TensorSlot slot, IEnumerable<string> names, ScalarType type, Device device)
        {
            foreach (var name in names)
                if (reusable.TryGetValue(name, out var old) && old.IsMaterialised && old.Shape.SequenceEqual(slot.Shape)
                    && old.Tensor.dtype == type && old.Tensor.device.type == device.type && old.Tensor.device.index == device.index)
                {
                    slot.Set(old.Take()!);
                    return true;
                }
            return false;
        }
        var missing = new List<string>();
        var mismatched = new List<(string, long[], long[])>();
        var jobs = new List<(TensorSlot Slot, string Key, string? Source, ScalarType Type, Device Device)>();
        foreach (var (slot, names) in slotNames)
        {
            if (options.IncludeKey is { } include && !names.Any(include)) continue; // another stage's slice
            string key = names[0];
            string? src = names.Select(n => toModel.GetValueOrDefault(n)).FirstOrDefault(s => s is not null);
            var device = deviceOf(ModulePath.Parent(key));
            DType target = slot.FixedDType ?? (src is not null && !DTypes.IsFloating(source.DTypeOf(src)) ? source.DTypeOf(src) : dtype);
            if (src is null) missing.AddRange(names);
            else if (!source.Shape(src).SequenceEqual(slot.Shape))
            {
                mismatched.Add((key, source.Shape(src), slot.Shape));
                src = null;
            }
            if (src is not null && Reused(slot, names, TorchRuntime.ToScalarType(target), device)) continue;
            jobs.Add((slot, key, src, TorchRuntime.ToScalarType(target), device));
        }
        // Non-persistent buffers (rotary tables, causal masks) are computed from the config, never read.
        foreach (var (key, slot) in model.NamedBuffers())
            if (!slotNames.ContainsKey(slot) && (options.IncludeKey is null || options.IncludeKey(key))
                && !Reused(slot, new[] { key }, TorchRuntime.ToScalarType(slot.FixedDType ?? dtype), deviceOf(ModulePath.Parent(key))))
                jobs.Add((slot, key, null, TorchRuntime.ToScalarType(slot.FixedDType ?? dtype), deviceOf(ModulePath.Parent(key))));
        var errors = new List<string>();
        if (mismatched.Count > 0 && !options.IgnoreMismatchedSizes)
        {
            string detail = string.Join("; ", mismatched.Select(m =>
                $"{source.Describe(toModel[m.Item1])} has shape [{string.Join(", ", m.Item2)}], the model expects [{string.Join(", ", m.Item3)}]"));
            throw new ShapeMismatchException($"size mismatch for {mismatched.Count} tensor(s): {detail}. " +
                "Pass ignore_mismatched_sizes to load the rest and initialise these fresh.");
        }
        if (options.Strict && (missing.Count > 0 || unexpected.Count > 0))
            throw new LoadingException($"strict loading of {model.ClassName}: missing keys [{string.Join(", ", missing)}], unexpected keys [{string.Join(", ", unexpected)}]");

        Quantization.QuantizedLinears.RefuseMissing(model, missing);
        Materialise(model, source, jobs, owners, dtype, options.Threads, log, options.Progress);
        try { Quantization.QuantizedLinears.Finish(model, model.Config.SourcePath ?? "config.json"); }
        catch
        {
            foreach (var (_, slot) in model.NamedTensors()) slot.Release();
            throw;
        }
        if (missing.Count > 0)
            log?.LogWarning("Some weights of {Class} were not in the checkpoint and are newly initialised: {Keys}", model.ClassName, string.Join(", ", missing));
        if (unexpected.Count > 0)
            log?.LogWarning("Some checkpoint weights were not used by {Class}: {Keys}", model.ClassName, string.Join(", ", unexpected));
        foreach (var m in mismatched)
            errors.Add($"{m.Item1}: checkpoint shape [{string.Join(", ", m.Item2)}] vs model [{string.Join(", ", m.Item3)}], newly initialised");
        return new LoadingInfo(missing, unexpected, mismatched, errors);
    }

    /// <summary>HF's _fix_key: TF-era LayerNorm names gamma/beta become weight/bias.</summary>
    internal static string FixLegacyKey(string key)
    {
        if (key.Contains("beta", StringComparison.Ordinal)) return key.Replace("beta", "bias", StringComparison.Ordinal);
        if (key.Contains("gamma", StringComparison.Ordinal)) return key.Replace("gamma", "weight", StringComparison.Ordinal);
        return key;
    }

    private static Dictionary<TensorSlot, string> OwnerClasses(HfModule model)
    {
        var owners = new Dictionary<TensorSlot, string>(ReferenceEqualityComparer.Instance);
        foreach (var (_, module) in model.NamedModules())
            foreach (var (_, slot) in module.LocalTensors)
                owners.TryAdd(slot, module.ClassName);
        return owners;
    }

    private static void Materialise(CausalLMModel model, StateSource source,
        List<(TensorSlot Slot, string Key, string? Source, ScalarType Type, Device Device)> jobs,
        Dictionary<TensorSlot, string> owners, DType dtype, int threads, ILogger? log, Action<int, int, long, long>? progress)
    {
        var sw = Stopwatch.StartNew();
        long totalBytes = jobs.Sum(j => j.Slot.ElementCount * DTypes.Size(TorchRuntime.ToDType(j.Type)));
        long doneBytes = 0;
        int doneCount = 0;
        long lastReport = 0;
        double initStd = model.Config.GetDouble("initializer_range", 0.02);
        var failures = new ConcurrentQueue<Exception>();
        Parallel.ForEach(jobs, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) }, job =>
        {
            try
            {
                using var noGrad = torch.no_grad();
                Tensor t;
                if (job.Slot.IsBuffer && job.Slot.Init is not null && job.Source is null)
                    t = job.Slot.Init(TorchRuntime.ToDType(job.Type), job.Device);
                else
                {
                    t = empty(job.Slot.Shape, job.Type, job.Device);
                    if (job.Source is not null) source.Fill(job.Source, t);
                    else InitMissing(t, job.Key, owners[job.Slot], initStd);
                }
                job.Slot.Set(t);
                long bytes = t.NumberOfElements * t.ElementSize;
                long now = Interlocked.Add(ref doneBytes, bytes);
                int n = Interlocked.Increment(ref doneCount);
                progress?.Invoke(n, jobs.Count, now, totalBytes);
                long ms = sw.ElapsedMilliseconds;
                long last = Interlocked.Read(ref lastReport);
                if (log is not null && ms - last >= 1000 && Interlocked.CompareExchange(ref lastReport, ms, last) == last)
                    log.LogInformation("materialised {Done}/{Total} tensors, {Bytes} of {TotalBytes} ({Rate:0.00} GB/s)",
                        n, jobs.Count, ByteSize.Format(now), ByteSize.Format(totalBytes), now / Math.Max(1e-9, sw.Elapsed.TotalSeconds) / 1e9);
            }
            catch (Exception ex)
            {
                failures.Enqueue(ex);
            }
        });
        if (!failures.IsEmpty)
        {
            foreach (var (_, slot) in model.NamedTensors()) slot.Release();
            var first = failures.First();
            if (first is ShardPipeException) throw first;
            throw new ShardPipeException($"loading {model.ClassName} failed: {first.Message}", first);
        }
        foreach (var (path, module) in model.NamedModules())
            if (module.LocalTensors.Count > 0 && module.LocalTensors[0].Slot.IsMaterialised) module.Device = module.LocalTensors[0].Slot.Tensor.device;
        log?.LogInformation("loaded {Count} tensors, {Bytes} in {Seconds:0.00} s", jobs.Count, ByteSize.Format(doneBytes), sw.Elapsed.TotalSeconds);
    }

    /// <summary>HF's _init_weights for weights the checkpoint lacks: normal(0, initializer_range), norms 1, biases 0.</summary>
    private static void InitMissing(Tensor t, string key, string ownerClass, double std)
    {
        bool isNorm = ownerClass.Contains("Norm", StringComparison.Ordinal);
        if (key.EndsWith(".bias", StringComparison.Ordinal)) t.zero_();
        else if (isNorm) t.fill_(1.0);
        else t.normal_(0.0, std);
    }
}
