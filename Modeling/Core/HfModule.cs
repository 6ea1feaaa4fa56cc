using ShardPipe.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Core;

/// <summary>
/// A parameter or buffer of a module: shape known from the config, tensor absent until materialised (that is
/// our meta device: a model is built as a tree of slots first and takes memory only when loaded).
/// A slot shared by two modules is a tied weight.
/// </summary>
public sealed class TensorSlot
{
    public long[] Shape { get; internal set; }
    /// <summary>Fixed dtype for buffers that do not follow the model dtype (e.g. bool masks, float32 inv_freq); null = model dtype.</summary>
    public DType? FixedDType { get; }
    public bool IsBuffer { get; }
    /// <summary>Buffers saved in the state dict; HF's non-persistent buffers (rotary caches, masks) are not.</summary>
    public bool Persistent { get; }
    public Tensor? Value { get; private set; }
    /// <summary>Computes a buffer's contents (buffers are derived from the config, never read from files).</summary>
    public Func<DType, Device, Tensor>? Init { get; }

    internal TensorSlot(long[] shape, bool isBuffer, bool persistent, DType? fixedDType, Func<DType, Device, Tensor>? init)
    {
        Shape = shape;
        IsBuffer = isBuffer;
        Persistent = persistent;
        FixedDType = fixedDType;
        Init = init;
    }

    public bool IsMaterialised => Value is not null;

    public Tensor Tensor => Value ?? throw new InvalidOperationException("tensor is still on the meta device (not loaded)");

    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>Installs a tensor, disposing the one it replaces.</summary>
    public void Set(Tensor value)
    {
        if (!ReferenceEquals(Value, value)) Value?.Dispose();
        Value = value;
        Shape = value.shape;
    }

    public void Release()
    {
        Value?.Dispose();
        Value = null;
    }

    /// <summary>Takes the tensor out without disposing it (the caller keeps it: a pool of offload buffers, a new model that reuses it).</summary>
    internal Tensor? Take()
    {
        var v = Value;
        Value = null;
        return v;
    }
}

/// <summary>
/// A node of a model's module tree, named and ordered as Hugging Face registers it, so that the dotted paths of
/// its parameters are exactly the checkpoint's state-dict keys.
/// </summary>
public abstract class HfModule
{
    private readonly List<(string Name, HfModule Module)> _children = new();
    private readonly List<(string Name, TensorSlot Slot)> _tensors = new();

    /// <summary>The HF class name (what <c>no_split_module_classes</c> refers to).</summary>
    public abstract string ClassName { get; }

    /// <summary>The device this module's tensors live on (set when loaded).</summary>
    public Device Device { get; internal set; } = CPU;

    protected T Child<T>(string name, T module) where T : HfModule
    {
        _children.Add((name, module));
        return module;
    }

    protected TensorSlot Parameter(string name, params long[] shape)
    {
        var slot = new TensorSlot(shape, isBuffer: false, persistent: true, fixedDType: null, init: null);
        _tensors.Add((name, slot));
        return slot;
    }

    /// <summary>Registers an existing slot under this module too: a tied parameter.</summary>
    protected TensorSlot TiedParameter(string name, TensorSlot shared)
    {
        _tensors.Add((name, shared));
        return shared;
    }

    protected TensorSlot Buffer(string name, long[] shape, bool persistent, DType? fixedDType, Func<DType, Device, Tensor> init)
    {
        var slot = new TensorSlot(shape, isBuffer: true, persistent, fixedDType, init);
        _tensors.Add((name, slot));
        return slot;
    }

    /// <summary>RSS around this module's forward, while the model's memory hooks are on (<c>add_memory_hooks</c>).</summary>
    public MemoryHookState? MemoryHook { get; internal set; }

    /// <summary>Taken at the top of a forward: <c>using var hook = Hook();</c> (see <see cref="ForwardHook"/>).</summary>
    public ForwardHook Hook() => new(MemoryHook);

    /// <summary>
    /// Gives this module another set of tensors (a quantized Linear: the stored format's tensors before loading, its packed
    /// form after), so the state-dict keys, the planner's sizes and the slices follow what the module really holds.
    /// </summary>
    internal void ReplaceTensors(IEnumerable<(string Name, TensorSlot Slot)> tensors)
    {
        _tensors.Clear();
        _tensors.AddRange(tensors);
    }

    /// <summary>A parameter slot of a fixed dtype, not yet registered (see <see cref="ReplaceTensors"/>).</summary>
    internal static TensorSlot NewParameter(long[] shape, DType dtype) => new(shape, isBuffer: false, persistent: true, dtype, init: null);

    public IReadOnlyList<(string Name, HfModule Module)> Children => _children;
    public IReadOnlyList<(string Name, TensorSlot Slot)> LocalTensors => _tensors;

    /// <summary>Every (path, module) below and including this one, depth-first in registration order.</summary>
    public IEnumerable<(string Path, HfModule Module)> NamedModules(string prefix = "")
    {
        yield return (prefix, this);
        foreach (var (name, child) in _children)
            foreach (var m in child.NamedModules(Join(prefix, name)))
                yield return m;
    }

    /// <summary>
    /// Every (key, slot) in registration order, parameters and buffers interleaved as PyTorch orders them
    /// (a module's own tensors, then its children's). With <paramref name="removeDuplicate"/> a tied slot
    /// appears once, under its first name (as <c>named_parameters()</c>).
    /// </summary>
    public IEnumerable<(string Key, TensorSlot Slot)> NamedTensors(bool removeDuplicate = true)
    {
        var seen = new HashSet<TensorSlot>(ReferenceEqualityComparer.Instance);
        foreach (var (path, module) in NamedModules())
            foreach (var (name, slot) in module._tensors)
                if (!removeDuplicate || seen.Add(slot))
                    yield return (Join(path, name), slot);
    }

    public IEnumerable<(string Key, TensorSlot Slot)> NamedParameters(bool removeDuplicate = true) =>
        NamedTensors(removeDuplicate).Where(t => !t.Slot.IsBuffer);

    public IEnumerable<(string Key, TensorSlot Slot)> NamedBuffers() => NamedTensors().Where(t => t.Slot.IsBuffer);

    /// <summary>The state dict's keys: parameters (tied ones under every name) and persistent buffers, in order.</summary>
    public IEnumerable<(string Key, TensorSlot Slot)> StateDictSlots() =>
        NamedTensors(removeDuplicate: false).Where(t => !t.Slot.IsBuffer || t.Slot.Persistent);

    public static string Join(string prefix, string name) => prefix.Length == 0 ? name : prefix + "." + name;
}
