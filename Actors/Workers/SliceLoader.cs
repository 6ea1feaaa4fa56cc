using System.Diagnostics;
using System.Text.Json.Nodes;
using Akka.Actor;
using Akka.Event;
using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Workers;

/// <summary>A slice materialised and ready to run: the model (only this slice's tensors are real) and what it holds.</summary>
public sealed record SliceReady(int Epoch, CausalLMModel Model, long Bytes, int Tensors, bool Streamed, PipelineHop[] Route);

/// <summary>
/// Materialises one device worker's slice, off the actor's thread: the model built on meta from the slice's config,
/// then only the slice's tensors read — from local shards when this node may read the model's folder, otherwise
/// streamed from the shard reader the plan names (over its bulk channel, falling back to actor messages once if the
/// channel is unreachable). Progress goes to the coordinator at most every 250 ms. A slice with a quantize request
/// packs its Linears once read (round-to-nearest, as one process does).
/// </summary>
public sealed class SliceLoader
{
    private readonly NodeSettings _settings;
    private readonly ILoggingAdapter _log;
    private readonly string _stage;
    private readonly ActorSystem _system;
    private readonly bool _disk;

    /// <param name="device">The worker's device; a <c>disk</c> device keeps its slice's weights on disk and reads them per step.</param>
    public SliceLoader(NodeSettings settings, ILoggingAdapter log, string stage, string device, ActorSystem system)
    {
        _settings = settings;
        _log = log;
        _stage = stage;
        _system = system;
        _disk = device == "disk";
    }

    /// <param name="previous">This worker's slice of an earlier epoch of the same model: tensors it holds are taken over, not read.</param>
    public SliceReady Materialise(LoadSlice slice, IActorRef coordinator, string self, CausalLMModel? previous = null)
    {
        long lastReport = 0;
        var clock = Stopwatch.StartNew();
        void Progress(int done, int total, long bytes, long totalBytes)
        {
            long now = clock.ElapsedMilliseconds, last = Interlocked.Read(ref lastReport);
            if ((done == total || now - last >= 250) && Interlocked.CompareExchange(ref lastReport, now, last) == last)
                coordinator.Tell(new SliceProgress(slice.PlanEpoch, self, done, total, bytes)); // Tell is safe off the actor thread
        }
        FaultHooks.For(_system).BeforeMaterialise?.Invoke();
        var config = new PretrainedConfig((JsonObject)JsonNode.Parse(slice.ConfigJson)!);
        bool local = _settings.HasLocal(SafeLocate(slice.Model));
        if (_disk && !local)
            throw new ClusterException($"{_stage}: a disk device reads its weights from a local checkpoint, and this node has none of {slice.Model}");
        var model = PreTrainedModel.FromPretrained(local ? slice.Model : null, new FromPretrainedOptions
        {
            Config = config,
            Variant = slice.Variant,
            DType = slice.DType,
            DeviceMap = _disk ? "disk" : null,
            OffloadFolder = _disk ? _settings.OffloadFolder : null,
            IncludeKey = key => ModulePath.CoveredByAny(slice.ModulePrefixes, key),
            Fetcher = local ? null : Streamer(slice),
            Progress = Progress,
            Reuse = previous,
            // Quantize on load: this slice's Linears are packed as they are read, as in one process (the plan counted them packed).
            Quantize = slice.Quantize?.Method,
            QuantizeGroupSize = slice.Quantize?.GroupSize ?? 128,
            QuantizeHead = slice.Quantize?.Head ?? false,
        });
        var materialised = model.NamedTensors().Where(t => t.Slot.IsMaterialised).ToList();
        long bytes = materialised.Sum(t => t.Slot.Tensor.NumberOfElements * t.Slot.Tensor.ElementSize) + (model.Offload?.Bytes ?? 0);
        _log.Info("{0}: materialised {1} tensors ({2}{3}) in {4:0.00} s{5}", _stage, materialised.Count, ByteSize.Format(bytes),
            model.Offload is { } o ? $", {ByteSize.Format(o.Bytes)} of it on disk" : "", clock.Elapsed.TotalSeconds, local ? "" : " (streamed)");
        return new SliceReady(slice.PlanEpoch, model, bytes, materialised.Count, !local, slice.Route);
    }

    /// <summary>Fetches each of the slice's tensors from the shard reader, straight into its destination.</summary>
    private TensorFetcher Streamer(LoadSlice slice)
    {
        if (slice.ShardReaderPath is null) throw new ClusterException($"no local copy of {slice.Model} and no shard reader to stream from");
        var reader = ((ExtendedActorSystem)_system).Provider.ResolveActorRef(slice.ShardReaderPath);
        var timeout = _settings.RequestTimeout;
        var diagnostics = NodeDiagnostics.For(_system);
        var index = slice.Tensors.Select(t => (t.Name, DTypes.TryParseCode(t.DType, out var d) ? d : throw new ProtocolException($"unknown dtype {t.DType}"), t.Shape)).ToList();
        int bulk = _settings.Bulk.Endpoint.Enabled ? 1 : 0; // dropped for the rest of this load once the channel proves unreachable
        ReadTensor Request(string name, bool overBulk) => new(Guid.NewGuid().ToString("N"), slice.Model, slice.Variant, name, 16, overBulk);
        return new TensorFetcher(index, (name, destination) =>
        {
            var got = StreamTensor(reader, Request(name, Volatile.Read(ref bulk) == 1), timeout);
            if (got.Offer is { } offer)
            {
                try
                {
                    BulkChannel.Receive(offer, destination, timeout, $"'{name}'", _settings.Bulk.Endpoint.Tls);
                    diagnostics.AddBulkBytes(destination.Length);
                    return;
                }
                catch (BulkUnreachableException ex)
                {
                    if (Interlocked.Exchange(ref bulk, 0) == 1) _log.Warning("{0}; this slice streams as actor messages", ex.Message);
                    got = StreamTensor(reader, Request(name, overBulk: false), timeout);
                }
            }
            if (got.Bytes!.Length != destination.Length)
                throw new CheckpointFormatException(name, name, $"streamed {got.Bytes.Length} bytes, expected {destination.Length}");
            got.Bytes.CopyTo(destination);
        });
    }

    /// <summary>Asks the shard reader for one tensor and waits for its bytes (actor messages) or its bulk offer.</summary>
    private StreamedTensor StreamTensor(IActorRef reader, ReadTensor request, TimeSpan timeout)
    {
        var done = new TaskCompletionSource<StreamedTensor>(TaskCreationOptions.RunContinuationsAsynchronously);
        // Called on the loader's pool thread, where Context does not exist: the receiver is a top-level actor.
#pragma warning disable AK1008
        _system.ActorOf(Props.Create(typeof(StreamReceiverActor), reader, request, done, timeout)); // no expression to compile per tensor
#pragma warning restore AK1008
        return done.Task.GetAwaiter().GetResult();
    }

    private static string SafeLocate(string model)
    {
        try { return ModelLocator.Locate(model); }
        catch (CheckpointNotFoundException) { return model; }
    }
}
