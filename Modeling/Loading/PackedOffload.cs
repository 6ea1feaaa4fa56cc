using System.IO.Hashing;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Layers;
using ShardPipe.Modeling.Models;
using ShardPipe.Modeling.Quantization;
using ShardPipe.Placement;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Loading;

/// <summary>Quantize on load as from_pretrained was asked for it (what <see cref="PackedOffload"/> packs offloaded Linears with).</summary>
public sealed record QuantizeOnLoadRequest(string Method, int GroupSize, bool Head);

/// <summary>
/// Quantized Linears under a disk-mapped module. The offloaded unit is the packed weight as it is held in memory
/// (<see cref="PackedWeight"/>: codes, float32 scales, zero points, the act-order permutation), not the checkpoint's stored
/// form: at load each such Linear is packed once — repacked from its GPTQ / AWQ / compressed-tensors tensors, or quantized
/// from its float weight when quantizing on load — and written into <c>offload_folder</c> as its own safetensors file
/// (<c>quantized-&lt;id&gt;/&lt;module&gt;.safetensors</c>, an XxHash3 of each tensor in the file's metadata; the folder is this
/// load's own, so two models or two loads on one node never share a file, and it is removed when the model is), one Linear at a time, so
/// the load never holds more than one packed Linear beyond the resident model. When its module runs,
/// <see cref="DiskOffload"/> brings those tensors in like any offloaded tensor (mapped in place or read into reused
/// buffers, the next module prefetched), checks each one's hash, and the Linear computes on a <see cref="PackedWeight"/>
/// wrapped over them for the call (<see cref="QuantizedLinears.Rewrap"/>); after the call it holds none.
/// </summary>
internal static class PackedOffload
{
    /// <summary>An offloaded quantized Linear: its empty held slots (set only while it runs) and how to re-wrap them.</summary>
    internal sealed record Unit(string Path, Linear Linear, int Bits, int GroupSize, List<(string Name, TensorSlot Slot)> Held)
    {
        public void Wrap() => Linear.Quantized!.Packed =
            QuantizedLinears.Rewrap(Linear, Bits, GroupSize, Held.ToDictionary(h => h.Name, h => h.Slot.Tensor, StringComparer.Ordinal));

        public void Unwrap() => Linear.Quantized!.Packed = null;
    }

    /// <summary>A held tensor written for a unit: where it lives and the hash it must read back with.</summary>
    internal sealed record Written(string Key, TensorSlot Slot, SafeTensorsFile File, TensorInfo Info, ulong Hash);

    private const string HashKey = "shardpipe.xxh3.";

    /// <summary>
    /// Packs and writes every quantized Linear (or, with <paramref name="quantize"/>, every Linear quantize-on-load targets)
    /// under <paramref name="diskPrefixes"/>; the model's Linears are left holding empty packed slots.
    /// </summary>
    public static (List<Unit> Units, List<Written> Tensors, List<SafeTensorsFile> Files, string? Folder) Write(CausalLMModel model, Checkpoint checkpoint,
        IReadOnlyList<string> diskPrefixes, DType dtype, string? offloadFolder, QuantizeOnLoadRequest? quantize, Func<string, bool>? include,
        Func<string, TensorLocation?> find)
    {
        bool Mine(string path) => ModulePath.CoveredByAny(diskPrefixes, path + ".weight") && include?.Invoke(path + ".weight") != false;
        var stored = QuantizedLinears.Of(model).Where(l => l.Linear.Quantized!.Packed is null && Mine(l.Path)).ToList();
        QuantizationConfig? scheme = null;
        int bits = 0;
        var floats = new List<(string Path, Linear Linear)>();
        if (quantize is not null)
        {
            (bits, scheme, var targets) = RoundToNearest.Targets(model, quantize.Method, quantize.GroupSize, quantize.Head, loaded: true);
            floats = targets.Where(t => t.Linear.Quantized is null && !t.Linear.Weight.IsMaterialised && Mine(t.Path)).ToList();
        }
        var units = new List<Unit>();
        var tensors = new List<Written>();
        var files = new List<SafeTensorsFile>();
        if (stored.Count + floats.Count == 0) return (units, tensors, files, null);
        string root = offloadFolder ?? throw new InvalidInputException(
            $"the device map offloads {stored.Count + floats.Count} quantized Linear(s) to disk (first {(stored.Count > 0 ? stored[0].Path : floats[0].Path)}), which are kept there packed as they run: give an offload_folder (--offload-folder) to write them to");

        // Stored forms absent from the checkpoint are an error, as for resident quantized Linears.
        var missing = stored.SelectMany(l => l.Linear.Quantized!.Stored.Select(s => HfModule.Join(l.Path, s.Name))).Where(k => find(k) is null).ToList();
        QuantizedLinears.RefuseMissing(model, missing);
        string folder = Path.Combine(root, "quantized-" + Guid.NewGuid().ToString("N")[..12]);
        try
        {
            foreach (var (path, linear) in stored)
            {
                var state = linear.Quantized!;
                PackedWeight packed;
                using (var scope = NewDisposeScope())
                {
                    var read = new Dictionary<string, Tensor>(StringComparer.Ordinal);
                    string shard = "";
                    foreach (var (name, slot) in state.Stored)
                    {
                        string key = HfModule.Join(path, name);
                        var location = find(key)!;
                        shard = checkpoint.Shard(location.Shard).Path;
                        read[name] = ReadAs(checkpoint, location, key, slot.Shape, slot.FixedDType ?? (DTypes.IsFloating(location.Info.DType) ? dtype : location.Info.DType));
                    }
                    packed = Repack.FromStored(state.Config, path, shard, (int)linear.OutFeatures, (int)linear.InFeatures, read);
                    Keep(packed);
                }
                units.Add(Offload(folder, path, linear, state, packed, tensors, files));
            }
            foreach (var (path, linear) in floats)
            {
                string key = HfModule.Join(path, "weight");
                var location = find(key);
                if (location is null) continue; // a float weight the checkpoint lacks stays initialised in memory (never quantized), as resident
                PackedWeight packed;
                using (var scope = NewDisposeScope())
                {
                    var weight = ReadAs(checkpoint, location, key, linear.Weight.Shape, dtype);
                    packed = RoundToNearest.Quantize(weight, bits, quantize!.GroupSize, dtype);
                    Keep(packed);
                }
                units.Add(Offload(folder, path, linear, new QuantizedState { Config = scheme!, Stored = Array.Empty<(string, TensorSlot)>() }, packed, tensors, files));
            }
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            Remove(folder);
            throw;
        }
        return (units, tensors, files, folder);
    }

    /// <summary>A checkpoint tensor at <paramref name="target"/> dtype, its shape checked against the model's.</summary>
    private static Tensor ReadAs(Checkpoint checkpoint, TensorLocation location, string key, long[] shape, DType target)
    {
        if (!location.Info.Shape.SequenceEqual(shape))
            throw new ShapeMismatchException($"size mismatch for {key} in {checkpoint.Shard(location.Shard).Path}: checkpoint shape [{string.Join(", ", location.Info.Shape)}], the model expects [{string.Join(", ", shape)}]");
        var t = empty(location.Info.Shape, TorchRuntime.ToScalarType(location.Info.DType));
        checkpoint.ReadInto(location, t.bytes);
        return location.Info.DType == target ? t : t.to(TorchRuntime.ToScalarType(target));
    }

    private static void Keep(PackedWeight w)
    {
        w.Codes.MoveToOuterDisposeScope();
        w.Scales.MoveToOuterDisposeScope();
        w.Zeros?.MoveToOuterDisposeScope();
        w.Perm?.MoveToOuterDisposeScope();
    }

    /// <summary>Writes one packed Linear's held tensors with their hashes, frees them, and leaves the Linear holding empty slots.</summary>
    private static Unit Offload(string folder, string path, Linear linear, QuantizedState state, PackedWeight packed, List<Written> tensors, List<SafeTensorsFile> files)
    {
        var held = new List<(string Name, Tensor Tensor)> { ("weight_packed", packed.Codes), ("weight_scale", packed.Scales) };
        if (packed.Zeros is { } z) held.Add(("weight_zero_point", z));
        if (packed.Perm is { } p) held.Add(("weight_perm", p));
        string file = Path.Combine(folder, path + ".safetensors");
        var metadata = new Dictionary<string, string>(SafeTensorsWriter.PtMetadata);
        foreach (var (name, t) in held) metadata[HashKey + name] = Hash(t.contiguous().bytes).ToString("x16");
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(file)!);
            SafeTensorsWriter.Write(file, held.Select(h => new TensorSource(h.Name, TorchRuntime.ToDType(h.Tensor.dtype), h.Tensor.shape,
                span => h.Tensor.contiguous().bytes.CopyTo(span))), metadata);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointFormatException(Path.GetDirectoryName(folder)!, null, $"offload folder cannot be written: {ex.Message}", ex);
        }
        var opened = SafeTensorsFile.Open(file);
        files.Add(opened);
        var slots = QuantizedLinears.HoldOffloaded(linear, state, packed);
        foreach (var (_, t) in held) t.Dispose();
        foreach (var (name, slot) in slots)
        {
            var info = opened.Get(name);
            if (!opened.Header.Metadata.TryGetValue(HashKey + name, out var hex) || !ulong.TryParse(hex, System.Globalization.NumberStyles.HexNumber, null, out ulong hash))
                throw new CheckpointFormatException(file, name, "offloaded packed tensor has no hash in the file's metadata");
            tensors.Add(new Written(HfModule.Join(path, name), slot, opened, info, hash));
        }
        return new Unit(path, linear, packed.Bits, packed.GroupSize, slots);
    }

    /// <summary>Removes a load's packed files (after they were closed); a folder already gone or busy is left as it is.</summary>
    public static void Remove(string? folder)
    {
        if (folder is null) return;
        try { Directory.Delete(folder, recursive: true); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
    }

    public static ulong Hash(ReadOnlySpan<byte> bytes) => XxHash3.HashToUInt64(bytes);

    /// <summary>XxHash3 of native memory of any length (spans are int-sized: over 1 GiB it is hashed piece by piece).</summary>
    public static unsafe ulong Hash(IntPtr start, long length)
    {
        if (length <= 1 << 30) return XxHash3.HashToUInt64(new ReadOnlySpan<byte>((void*)start, (int)length));
        var h = new XxHash3();
        for (long at = 0; at < length; at += 1 << 30)
            h.Append(new ReadOnlySpan<byte>((byte*)start + at, (int)Math.Min(1 << 30, length - at)));
        return h.GetCurrentHashAsUInt64();
    }
}
