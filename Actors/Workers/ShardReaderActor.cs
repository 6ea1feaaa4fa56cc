using System.IO.Hashing;
using Akka.Actor;
using Akka.Event;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// Serves tensors out of this node's local checkpoints to workers that have no copy: a header, then chunks of at
/// most <see cref="Protocol.MaxChunkBytes"/> with a CRC-32 each, at most <c>Window</c> unacknowledged chunks in
/// flight per transfer. Reads are positional (pread), so nothing of the shard stays mapped here.
/// </summary>
public sealed class ShardReaderActor : ReceiveActor
{
    private sealed class Transfer
    {
        public required IActorRef Receiver { get; init; }
        public required TensorLocation Location { get; init; }
        public required Checkpoint Checkpoint { get; init; }
        public required int Window { get; init; }
        public long Offset;
        public int NextSeq;
        public int Acked = -1;
    }

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly Dictionary<string, Checkpoint> _open = new();
    private readonly Dictionary<string, Transfer> _transfers = new();
    private BulkSettings? _bulk;
    private BulkServer? _server;

    private readonly Func<string, bool> _mayServe;

    /// <param name="mayServe">Whether a model folder may be served (the node's <c>model-roots</c> and local-checkpoint rule); default: any.</param>
    public ShardReaderActor(BulkSettings? bulk = null, Func<string, bool>? mayServe = null)
    {
        _bulk = bulk;
        _mayServe = mayServe ?? (_ => true);
        Receive<ReadTensor>(Start);
        Receive<ChunkAck>(OnAck);
        Receive<Terminated>(t =>
        {
            foreach (var id in _transfers.Where(kv => kv.Value.Receiver.Equals(t.ActorRef)).Select(kv => kv.Key).ToList()) _transfers.Remove(id);
        });
    }

    private void Start(ReadTensor read)
    {
        try
        {
            if (!ShardPipe.Actors.Membership.SenderRules.IsMemberWithRole(Context.System, Sender, ShardPipe.Actors.Membership.Roles.Worker))
                throw new ClusterException($"tensors are served only to workers of this cluster, not to {Sender.Path.Address}");
            string key = read.Model + "|" + read.Variant;
            if (!_open.TryGetValue(key, out var ckpt))
            {
                string folder = ModelLocator.Locate(read.Model);
                if (!_mayServe(folder)) throw new ClusterException($"{folder} is not under this node's model-roots (or local checkpoints are off): not served");
                _open[key] = ckpt = Checkpoint.Open(folder, read.Variant);
            }
            var loc = ckpt.Get(read.Tensor);
            if (read.Bulk && Bulk() is { } server && loc.Info.ByteLength >= _bulk!.MinBytes)
            {
                var token = server.Offer($"'{read.Tensor}'", ckpt.Shard(loc.Shard), loc.Info, _bulk.OfferTimeout);
                Sender.Tell(new BulkOffer(read.TransferId, server.Host, server.Port, token, DTypes.Code(loc.Info.DType), loc.Info.Shape,
                    loc.Info.ByteLength, server.ChunkBytes, server.Window));
                return;
            }
            var t = new Transfer { Receiver = Sender, Location = loc, Checkpoint = ckpt, Window = Math.Clamp(read.Window, 1, 64) };
            _transfers[read.TransferId] = t;
            Context.Watch(Sender);
            Sender.Tell(new TensorHeader(read.TransferId, DTypes.Code(loc.Info.DType), loc.Info.Shape, loc.Info.ByteLength));
            Pump(read.TransferId, t);
        }
        catch (Exception ex) when (ex is ShardPipeException or IOException)
        {
            _log.Warning("read of {0} from {1} failed: {2}", read.Tensor, read.Model, ex.Message);
            Sender.Tell(new ReadFailed(read.TransferId, ex.Message));
        }
    }

    /// <summary>The socket side channel, started on first use; null when off or when it cannot listen (actor messages then).</summary>
    private BulkServer? Bulk()
    {
        if (_server is not null || _bulk is null || !_bulk.Endpoint.Enabled) return _server;
        try
        {
            _server = new BulkServer(_bulk.Endpoint.BindHost, _bulk.Endpoint.AdvertisedHost, _bulk.Endpoint.Port, _bulk.ChunkBytes, _bulk.Window, _bulk.Endpoint.Tls, _log, _bulk.Limits);
            _log.Info("bulk channel listening on {0}:{1}", _server.Host, _server.Port);
        }
        catch (ClusterException ex)
        {
            _log.Warning("{0}; weights stream as actor messages", ex.Message);
            _bulk = _bulk with { Endpoint = _bulk.Endpoint with { Enabled = false } };
        }
        return _server;
    }

    private void OnAck(ChunkAck ack)
    {
        if (!_transfers.TryGetValue(ack.TransferId, out var t)) return;
        t.Acked = Math.Max(t.Acked, ack.Sequence);
        Pump(ack.TransferId, t);
    }

    /// <summary>Sends chunks while the window allows; the transfer ends once everything is sent and acknowledged.</summary>
    private void Pump(string id, Transfer t)
    {
        long total = t.Location.Info.ByteLength;
        while (t.Offset < total && t.NextSeq - t.Acked <= t.Window)
        {
            int n = (int)Math.Min(Protocol.MaxChunkBytes, total - t.Offset);
            var data = new byte[n];
            t.Checkpoint.Shard(t.Location.Shard).ReadRange(t.Location.Info, t.Offset, data);
            t.Receiver.Tell(new TensorChunk(id, t.NextSeq, t.Offset, total, Crc32.HashToUInt32(data), data));
            t.Offset += n;
            t.NextSeq++;
        }
        if (t.Offset >= total && t.Acked >= t.NextSeq - 1) _transfers.Remove(id);
    }

    protected override void PostStop()
    {
        _server?.Dispose();
        foreach (var c in _open.Values) c.Dispose();
    }
}
