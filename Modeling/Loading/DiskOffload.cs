using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Loading;

/// <summary>
/// Weights a device map sends to <c>"disk"</c>, as Accelerate's disk offload: they stay out of memory and are brought
/// in just before their module runs and let go after. On Linux the files are mapped and each tensor lives over its
/// bytes in the mapping (<see cref="MappedWeights"/>: populated before use, dropped after — no copy); elsewhere (or
/// with <c>SHARDPIPE_OFFLOAD_READ=1</c>, for comparison) they are read with <c>pread</c> into reused tensors. With
/// prefetch, the next module's weights are brought in on another thread while one module runs. A tensor stored at its target dtype is read straight from the
/// checkpoint's own shard; any other is written once, at load time, converted, into <c>offload_folder</c> as
/// safetensors with an index (<c>offload_index.json</c>), and read from there.
/// </summary>
public sealed class DiskOffload : IDisposable
{
    /// <summary>An offloaded tensor: every name it has in the model (a tied weight has two), its slot, where it is read from.</summary>
    private sealed record Entry(string[] Keys, TensorSlot Slot, SafeTensorsFile File, TensorInfo Info, ScalarType Type)
    {
        public bool Under(string modulePath) => Keys.Any(k => ModulePath.Covers(modulePath, k));
        /// <summary>The tensor over its bytes in the file's mapping, when mapped (then it is never copied).</summary>
        public (Tensor Tensor, IntPtr Start, long Length)? Mapped { get; set; }
        /// <summary>XxHash3 its bytes must read back with (packed quantized tensors, <see cref="PackedOffload"/>); null: unchecked.</summary>
        public ulong? Hash { get; init; }
    }

    private readonly List<Entry> _entries;
    private readonly Checkpoint _checkpoint;
    private readonly List<SafeTensorsFile> _files;
    private readonly Dictionary<(ScalarType, string), Stack<Tensor>> _pool = new();
    private readonly object _gate = new();
    private (string Path, Task<List<(Entry, Tensor)>> Load)? _prefetch;
    private MappedWeights? _mapped;
    private readonly List<PackedOffload.Unit> _units;
    private long _inUse, _peakInUse;
    private string? _packedFolder;

    /// <summary>Whether the next module's weights are brought in while the current one runs.</summary>
    public bool Prefetch { get; set; } = true;

    /// <summary>Prefetch by default only when a core is free beyond libtorch's compute threads.</summary>
    public static bool PrefetchByDefault => Environment.ProcessorCount > TorchSharp.torch.get_num_threads();
    /// <summary>Bytes of weights kept on disk.</summary>
    public long Bytes { get; }
    /// <summary>Where converted weights were written (null when every offloaded tensor is read from the checkpoint itself).</summary>
    public string? Folder { get; }
    /// <summary>Quantized Linears kept on disk in their packed form (<see cref="PackedOffload"/>).</summary>
    public int PackedLinears => _units.Count;
    /// <summary>Bytes of offloaded tensors brought in now (modules running or prefetched), and the most there ever were at once.</summary>
    public long InUseBytes => Interlocked.Read(ref _inUse);
    public long PeakInUseBytes => Interlocked.Read(ref _peakInUse);

    private DiskOffload(List<Entry> entries, Checkpoint checkpoint, List<SafeTensorsFile> files, string? folder, List<PackedOffload.Unit> units)
    {
        _entries = entries;
        _units = units;
        _checkpoint = checkpoint;
        _files = files;
        Folder = folder;
        Bytes = entries.Sum(e => e.Info.ByteLength);
        if (MappedWeights.Supported && Environment.GetEnvironmentVariable("SHARDPIPE_OFFLOAD_READ") != "1")
        {
            _mapped = new MappedWeights();
            foreach (var e in entries) e.Mapped = _mapped.TensorOver(e.File, e.Info, e.Type);
        }
    }

    /// <summary>Whether offloaded weights are used in place from mapped files (else read into buffers).</summary>
    public bool InPlace => _mapped is not null;

    /// <summary>
    /// Sets up the store for every tensor of <paramref name="model"/> under a disk-mapped prefix. Tensors whose stored
    /// dtype differs from their target need <paramref name="offloadFolder"/> (a typed error naming it otherwise, as
    /// Hugging Face asks for one); a folder that cannot be created or written is an error naming it.
    /// </summary>
    /// <param name="include">Only these keys (a pipeline stage's slice); null = all.</param>
    /// <param name="quantize">Quantize on load: the offloaded Linears it targets are packed too, and kept on disk packed.</param>
    public static DiskOffload Build(CausalLMModel model, string checkpointFolder, string? variant, IReadOnlyList<string> diskPrefixes,
        DType dtype, string? offloadFolder, Func<string, bool>? include = null, QuantizeOnLoadRequest? quantize = null)
    {
        var checkpoint = Checkpoint.Open(checkpointFolder, variant);
        var files = new List<SafeTensorsFile>();
        var entries = new List<Entry>();
        string prefix = model.BaseModelPrefix + ".";
        var converted = new List<(string[] Keys, TensorSlot Slot, TensorLocation Source, DType Target)>();
        TensorLocation? Find(string key) => checkpoint.Tensors.FirstOrDefault(t => t.Name == key)
            ?? (key.StartsWith(prefix, StringComparison.Ordinal) ? checkpoint.Tensors.FirstOrDefault(t => t.Name == key[prefix.Length..]) : null);
        // Quantized Linears first: their offloaded unit is the packed form, written to the offload folder (never the stored form).
        List<PackedOffload.Unit> units;
        string? packedFolder;
        try
        {
            (units, var packed, var packedFiles, packedFolder) = PackedOffload.Write(model, checkpoint, diskPrefixes, dtype, offloadFolder, quantize, include, Find);
            files.AddRange(packedFiles);
            foreach (var w in packed)
                entries.Add(new Entry(new[] { w.Key }, w.Slot, w.File, w.Info, TorchRuntime.ToScalarType(w.Info.DType)) { Hash = w.Hash });
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }
        var packedSlots = entries.Select(e => e.Slot).ToHashSet(ReferenceEqualityComparer.Instance);
        try { return BuildFloats(); }
        catch
        {
            foreach (var f in files) f.Dispose();
            checkpoint.Dispose();
            PackedOffload.Remove(packedFolder);
            throw;
        }

        DiskOffload BuildFloats()
        {
            foreach (var group in model.StateDictSlots().GroupBy(s => s.Slot, ReferenceEqualityComparer.Instance))
            {
                var slot = (TensorSlot)group.Key!;
                if (packedSlots.Contains(slot)) continue;
                var keys = group.Select(g => g.Key).ToArray();
                var mine = keys.Where(k => ModulePath.CoveredByAny(diskPrefixes, k) && include?.Invoke(k) != false).ToArray();
                if (slot.IsMaterialised || slot.IsBuffer || mine.Length == 0) continue;
                // A tied weight is stored under one of its names (HF saves it once).
                var location = keys.Select(Find).FirstOrDefault(l => l is not null);
                if (location is null) continue; // missing from the checkpoint: initialised in memory like any missing key
                var target = slot.FixedDType ?? (DTypes.IsFloating(location.Info.DType) ? dtype : location.Info.DType);
                if (location.Info.DType == target)
                    entries.Add(new Entry(mine, slot, checkpoint.Shard(location.Shard), location.Info, TorchRuntime.ToScalarType(target)));
                else converted.Add((mine, slot, location, target));
            }
            string? folder = null;
            if (converted.Count > 0)
            {
                folder = offloadFolder ?? throw new InvalidInputException(
                    $"the device map offloads {converted.Count} tensor(s) to disk that are stored as {converted[0].Source.Info.DType}, not {DTypes.TorchName(converted[0].Target)}: give an offload_folder (--offload-folder) to write them to");
                string path = WriteConverted(folder, converted, checkpoint);
                var written = SafeTensorsFile.Open(path);
                files.Add(written);
                foreach (var c in converted)
                    entries.Add(new Entry(c.Keys, c.Slot, written, written.Header.Tensors.First(t => t.Name == c.Keys[0]), TorchRuntime.ToScalarType(c.Target)));
            }
            return new DiskOffload(entries, checkpoint, files, folder, units) { _packedFolder = packedFolder };
        }
    }

    /// <summary>Converted tensors, one safetensors file and an index naming where each lives.</summary>
    private static string WriteConverted(string folder, List<(string[] Keys, TensorSlot Slot, TensorLocation Source, DType Target)> tensors, Checkpoint checkpoint)
    {
        try
        {
            Directory.CreateDirectory(folder);
            string path = Path.Combine(folder, "offload.safetensors");
            SafeTensorsWriter.Write(path, tensors.Select(t => new TensorSource(t.Keys[0], t.Target, t.Source.Info.Shape, span =>
            {
                using var scope = NewDisposeScope();
                var stored = empty(t.Source.Info.Shape, TorchRuntime.ToScalarType(t.Source.Info.DType));
                checkpoint.ReadInto(t.Source, stored.bytes);
                var cast = stored.to(TorchRuntime.ToScalarType(t.Target)).contiguous();
                cast.bytes.CopyTo(span);
            })));
            var index = new JsonObject();
            foreach (var t in tensors) index[t.Keys[0]] = new JsonObject { ["dtype"] = DTypes.TorchName(t.Target), ["shape"] = new JsonArray(t.Source.Info.Shape.Select(d => (JsonNode)d).ToArray()), ["file"] = "offload.safetensors" };
            File.WriteAllText(Path.Combine(folder, "offload_index.json"), index.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            return path;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointFormatException(folder, null, $"offload folder cannot be written: {ex.Message}", ex);
        }
    }

    /// <summary>
    /// Installs the offloaded weights under <paramref name="modulePath"/> (read now, or taken from the prefetch) and
    /// starts reading those under <paramref name="next"/>; disposing gives the tensors back for reuse.
    /// </summary>
    public IDisposable? Use(string modulePath, string? next)
    {
        var mine = _entries.Where(e => e.Under(modulePath)).ToList();
        if (mine.Count == 0)
        {
            StartPrefetch(next);
            return null;
        }
        List<(Entry, Tensor)> loaded;
        Task<List<(Entry, Tensor)>>? pending = null;
        lock (_gate)
            if (_prefetch is { } p && p.Path == modulePath)
            {
                pending = p.Load;
                _prefetch = null;
            }
        loaded = pending is not null ? pending.GetAwaiter().GetResult() : Read(mine);
        foreach (var (entry, tensor) in loaded) entry.Slot.Set(tensor);
        var units = _units.Where(u => ModulePath.Covers(modulePath, u.Path)).ToList();
        foreach (var u in units) u.Wrap(); // each packed Linear over the tensors just brought in
        StartPrefetch(next);
        return new Lease(this, loaded, units);
    }

    private void StartPrefetch(string? next)
    {
        if (!Prefetch || next is null) return;
        var theirs = _entries.Where(e => e.Under(next)).ToList();
        if (theirs.Count == 0) return;
        lock (_gate)
        {
            if (_prefetch is not null) return;
            _prefetch = (next, Task.Run(() => Read(theirs)));
        }
    }

    /// <summary>Reads entries into pooled tensors (the same shapes recur layer after layer); mapped ones are populated in place.</summary>
    private List<(Entry, Tensor)> Read(List<Entry> entries)
    {
        var output = new List<(Entry, Tensor)>(entries.Count);
        MappedWeights.Populate(entries.Where(e => e.Mapped is not null).Select(e => (e.Mapped!.Value.Start, e.Mapped!.Value.Length, e.File.Path)));
        foreach (var e in entries)
        {
            if (e.Mapped is { } m)
            {
                Check(e, m.Start, m.Length);
                output.Add((e, m.Tensor));
                continue;
            }
            Tensor t;
            lock (_gate)
                t = _pool.TryGetValue((e.Type, string.Join(",", e.Info.Shape)), out var stack) && stack.Count > 0 ? stack.Pop() : null!;
            t ??= empty(e.Info.Shape, e.Type).DetachFromDisposeScope();
            try
            {
                ReadInto(e, t);
                unsafe { Check(e, new IntPtr(TensorMemory.Pointer(t)), e.Info.ByteLength); }
            }
            catch
            {
                t.Dispose();
                throw;
            }
            output.Add((e, t));
        }
        long now = Interlocked.Add(ref _inUse, entries.Sum(e => e.Info.ByteLength));
        for (long peak = Interlocked.Read(ref _peakInUse); now > peak; peak = Interlocked.Read(ref _peakInUse))
            if (Interlocked.CompareExchange(ref _peakInUse, now, peak) == peak) break;
        return output;
    }

    /// <summary>A hashed (packed) tensor must read back as written: changed bytes are a typed error naming the file, never wrong output.</summary>
    private static void Check(Entry e, IntPtr start, long length)
    {
        if (e.Hash is { } expected && PackedOffload.Hash(start, length) != expected)
            throw new CheckpointFormatException(e.File.Path, e.Info.Name, "offloaded packed weights do not read back as they were written (the file changed or is corrupt)");
    }

    private static void ReadInto(Entry e, Tensor t)
    {
        long total = e.Info.ByteLength;
        if (total <= int.MaxValue) e.File.ReadInto(e.Info, t.bytes);
        else
        {
            // Spans are int-sized: a tensor over 2 GiB is read row block by row block.
            long rows = t.shape[0], rowBytes = total / rows, perPiece = Math.Max(1, (1L << 30) / rowBytes);
            for (long r = 0; r < rows; r += perPiece)
            {
                using var piece = t.narrow(0, r, Math.Min(perPiece, rows - r));
                e.File.ReadRange(e.Info, r * rowBytes, piece.bytes);
            }
        }
    }

    private void GiveBack(List<(Entry Entry, Tensor Tensor)> loaded, List<PackedOffload.Unit> units)
    {
        foreach (var u in units) u.Unwrap();
        Interlocked.Add(ref _inUse, -loaded.Sum(l => l.Entry.Info.ByteLength));
        MappedWeights.Drop(loaded.Where(l => l.Entry.Mapped is not null).Select(l => (l.Entry.Mapped!.Value.Start, l.Entry.Mapped!.Value.Length)));
        foreach (var (entry, tensor) in loaded)
        {
            if (ReferenceEquals(entry.Slot.Value, tensor)) entry.Slot.Take();
            if (entry.Mapped is not null) continue; // the mapping's tensor stays with its entry
            lock (_gate)
            {
                var key = (entry.Type, string.Join(",", entry.Info.Shape));
                if (!_pool.TryGetValue(key, out var stack)) _pool[key] = stack = new Stack<Tensor>();
                stack.Push(tensor);
            }
        }
    }

    private sealed class Lease(DiskOffload owner, List<(Entry, Tensor)> loaded, List<PackedOffload.Unit> units) : IDisposable
    {
        public void Dispose() => owner.GiveBack(loaded, units);
    }

    public void Dispose()
    {
        (string, Task<List<(Entry, Tensor)>>)? pending;
        lock (_gate) { pending = _prefetch; _prefetch = null; }
        if (pending is { } p)
        {
            try { foreach (var (e, t) in p.Item2.GetAwaiter().GetResult()) if (e.Mapped is null) t.Dispose(); }
            catch (ShardPipeException) { } // the prefetch failed (the file went bad): nothing of it to free
        }
        foreach (var u in _units) u.Unwrap();
        foreach (var e in _entries)
        {
            if (e.Mapped is { } m)
            {
                if (ReferenceEquals(e.Slot.Value, m.Tensor)) e.Slot.Take();
                m.Tensor.Dispose();
            }
            else if (e.Slot.IsMaterialised) e.Slot.Release();
        }
        _mapped?.Dispose(); // after every tensor over the mappings is gone
        foreach (var stack in _pool.Values) while (stack.Count > 0) stack.Pop().Dispose();
        foreach (var f in _files) f.Dispose();
        _checkpoint.Dispose();
        PackedOffload.Remove(_packedFolder); // this load's packed files, closed above
    }
}
