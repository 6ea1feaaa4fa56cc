using System.IO.Hashing;
using Akka.Actor;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Workers;

/// <summary>A tensor's bytes as streamed over actor messages, or the reader's offer to send them over its bulk channel.</summary>
public sealed record StreamedTensor(byte[]? Bytes, BulkOffer? Offer);

/// <summary>
/// Receives one streamed tensor: checks every chunk's CRC and order, acknowledges it, and completes the caller's
/// task with the bytes (or a typed error). Stops itself when done; gives up after <c>timeout</c> without progress.
/// </summary>
public sealed class StreamReceiverActor : ReceiveActor
{
    private readonly TaskCompletionSource<StreamedTensor> _done;
    private byte[]? _buffer;
    private int _expected;

    public StreamReceiverActor(IActorRef reader, ReadTensor request, TaskCompletionSource<StreamedTensor> done, TimeSpan timeout)
    {
        _done = done;
        Context.Watch(reader);
        Context.SetReceiveTimeout(timeout);
        reader.Tell(request);
        Receive<TensorHeader>(h =>
        {
            _buffer = new byte[h.TotalBytes];
            if (h.TotalBytes == 0) Finish();
        });
        Receive<TensorChunk>(c =>
        {
            if (_buffer is null || c.Sequence != _expected || c.Offset + c.Data.Length > _buffer.LongLength)
            {
                Fail($"chunk {c.Sequence} of '{request.Tensor}' out of order or out of bounds (expected {_expected})");
                return;
            }
            if (Crc32.HashToUInt32(c.Data.Span) != c.Crc32)
            {
                Fail($"chunk {c.Sequence} of '{request.Tensor}' failed its CRC-32 check");
                return;
            }
            c.Data.Span.CopyTo(_buffer.AsSpan(checked((int)c.Offset)));
            _expected++;
            Sender.Tell(new ChunkAck(c.TransferId, c.Sequence));
            if (c.Offset + c.Data.Length == _buffer.LongLength) Finish();
        });
        Receive<BulkOffer>(offer =>
        {
            _done.TrySetResult(new StreamedTensor(null, offer)); // the caller's thread takes it from here, over the socket
            Context.Stop(Self);
        });
        Receive<ReadFailed>(f => Fail(f.Reason));
        Receive<Terminated>(t => Fail($"shard reader {t.ActorRef.Path.Address} stopped while streaming '{request.Tensor}'"));
        Receive<ReceiveTimeout>(_ => Fail($"no data for '{request.Tensor}' from {reader.Path.Address} in {timeout.TotalSeconds:0} s"));
    }

    private void Finish()
    {
        _done.TrySetResult(new StreamedTensor(_buffer, null));
        Context.Stop(Self);
    }

    private void Fail(string reason)
    {
        _done.TrySetException(new ClusterException(reason));
        Context.Stop(Self);
    }
}
