using TorchSharp;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using static TorchSharp.torch;

namespace ShardPipe.Modeling.Loading;

/// <summary>Where weights come from: a safetensors checkpoint or in-memory tensors (HF's <c>state_dict=</c>).</summary>
internal abstract class StateSource
{
    public abstract IReadOnlyList<string> Keys { get; }
    public abstract long[] Shape(string key);
    public abstract DType DTypeOf(string key);
    /// <summary>Fills <paramref name="target"/> (already at its final dtype and device) from the source tensor.</summary>
    public abstract void Fill(string key, Tensor target);
    public abstract string Describe(string key);

    public IEnumerable<DType> DTypesInOrder() => Keys.Select(DTypeOf);

    public static StateSource FromCheckpoint(Checkpoint c) => new CheckpointSource(c);
    public static StateSource FromTensors(IReadOnlyDictionary<string, Tensor> d) => new TensorSource(d);
    public static StateSource FromFetcher(TensorFetcher f) => new FetchedSource(f);

    /// <summary>Bytes fetched on demand (streamed from another node), one tensor at a time.</summary>
    private sealed class FetchedSource : StateSource
    {
        private readonly TensorFetcher _f;
        private readonly Dictionary<string, (DType DType, long[] Shape)> _index;
        private readonly List<string> _keys;

        public FetchedSource(TensorFetcher f)
        {
            _f = f;
            _index = f.Index.ToDictionary(t => t.Name, t => (t.DType, t.Shape), StringComparer.Ordinal);
            _keys = f.Index.Select(t => t.Name).ToList();
        }

        public override IReadOnlyList<string> Keys => _keys;
        public override long[] Shape(string key) => _index[key].Shape;
        public override DType DTypeOf(string key) => _index[key].DType;
        public override string Describe(string key) => $"streamed '{key}'";

        public override void Fill(string key, Tensor target)
        {
            var (dtype, shape) = _index[key];
            var srcType = TorchRuntime.ToScalarType(dtype);
            if (target.dtype == srcType && target.device_type == DeviceType.CPU && target.is_contiguous())
            {
                _f.Fetch(key, target.bytes); // straight into the tensor's storage
                return;
            }
            using var tmp = empty(shape, srcType, CPU);
            _f.Fetch(key, tmp.bytes);
            target.copy_(tmp);
        }
    }

    private sealed class CheckpointSource : StateSource
    {
        private readonly Checkpoint _c;
        private readonly List<string> _keys;

        public CheckpointSource(Checkpoint c)
        {
            _c = c;
            _keys = c.Tensors.Select(t => t.Name).ToList();
        }

        public override IReadOnlyList<string> Keys => _keys;
        public override long[] Shape(string key) => _c.Get(key).Info.Shape;
        public override DType DTypeOf(string key) => _c.Get(key).Info.DType;
        public override string Describe(string key) => $"{_c.Get(key).Shard}: '{key}'";

        public override void Fill(string key, Tensor target)
        {
            var loc = _c.Get(key);
            var srcType = TorchRuntime.ToScalarType(loc.Info.DType);
            if (target.dtype == srcType && target.device_type == DeviceType.CPU && target.is_contiguous())
            {
                ReadInto(loc, target);
                return;
            }
            // One temporary of this tensor's size: read at the stored dtype, convert (and move) in one copy.
            using var tmp = empty(loc.Info.Shape, srcType, CPU);
            ReadInto(loc, tmp);
            target.copy_(tmp);
        }

        /// <summary>pread straight into the tensor's storage, in ≤ 1 GiB pieces (spans are int-sized).</summary>
        private void ReadInto(TensorLocation loc, Tensor cpuTensor)
        {
            long total = loc.Info.ByteLength;
            if (total == 0) return;
            if (total <= int.MaxValue)
            {
                _c.ReadInto(loc, cpuTensor.bytes);
                return;
            }
            var file = _c.Shard(loc.Shard);
            long rows = cpuTensor.shape[0], rowBytes = total / rows;
            long rowsPerChunk = Math.Max(1, (1L << 30) / rowBytes);
            for (long r = 0; r < rows; r += rowsPerChunk)
            {
                long n = Math.Min(rowsPerChunk, rows - r);
                using var part = cpuTensor.narrow(0, r, n);
                file.ReadRange(loc.Info, r * rowBytes, part.bytes);
            }
        }
    }

    private sealed class TensorSource : StateSource
    {
        private readonly IReadOnlyDictionary<string, Tensor> _d;
        private readonly List<string> _keys;

        public TensorSource(IReadOnlyDictionary<string, Tensor> d)
        {
            _d = d;
            _keys = d.Keys.ToList();
        }

        public override IReadOnlyList<string> Keys => _keys;
        public override long[] Shape(string key) => _d[key].shape;
        public override DType DTypeOf(string key) => TorchRuntime.ToDType(_d[key].dtype);
        public override string Describe(string key) => $"state_dict['{key}']";
        public override void Fill(string key, Tensor target) => target.copy_(_d[key]);
    }
}
