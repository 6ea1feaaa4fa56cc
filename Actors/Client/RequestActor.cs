using System.Diagnostics;
using Akka.Actor;
using ShardPipe.Actors.Workers;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Actors.Transport;

namespace ShardPipe.Actors.Client;

/// <summary>
/// One request, caller side: sends it, collects streamed tokens (or the forward logits), watches every stage's
/// worker, and completes with the outcome — or with a <see cref="ClusterException"/> naming the stage that died,
/// failed, or stalled past the timeout.
/// </summary>
public sealed class RequestActor : ReceiveActor
{
    private readonly List<long[]> _steps = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private double _prefill;

    public RequestActor(IActorRef coordinator, IClientRequest request, IReadOnlyList<StageInfo> stages, TimeSpan stallTimeout,
        Action<long[]>? onTokens, TaskCompletionSource<RequestOutcome> done)
    {
        var provider = ((ExtendedActorSystem)Context.System).Provider;
        var watched = new Dictionary<IActorRef, string>();
        foreach (var s in stages)
        {
            var r = provider.ResolveActorRef(s.WorkerPath);
            if (watched.TryAdd(r, s.Device)) Context.Watch(r);
        }
        Context.SetReceiveTimeout(stallTimeout);
        coordinator.Tell(request);

        void Finish(RequestOutcome o) { done.TrySetResult(o); Context.Stop(Self); }
        void Fail(string message) { done.TrySetException(new ClusterException(message)); Context.Stop(Self); }

        Receive<TokensGenerated>(t =>
        {
            if (_steps.Count == 0) _prefill = _clock.Elapsed.TotalSeconds;
            _steps.Add(t.Tokens);
            onTokens?.Invoke(t.Tokens);
        });
        Receive<GenerationDone>(d =>
        {
            var rows = Enumerable.Range(0, request.InputIds.Length).Select(b => _steps.Select(s => s[b]).ToArray()).ToArray();
            Finish(new RequestOutcome(rows, null, _steps.Count, _prefill, _clock.Elapsed.TotalSeconds - _prefill));
        });
        Receive<ForwardResult>(f =>
        {
            using var t = TensorWire.ToTensor(f.LastLogits);
            var logits = Enumerable.Range(0, (int)t.shape[0]).Select(b => t[b].data<float>().ToArray()).ToArray();
            Finish(new RequestOutcome(Array.Empty<long[]>(), logits, 0, _clock.Elapsed.TotalSeconds, 0));
        });
        var chunks = new ChunkAssembler();
        Receive<MessageChunk>(c =>
        {
            object? whole;
            try { whole = chunks.Add(c); }
            catch (ProtocolException ex) { Fail($"request {request.RequestId}: {ex.Message}"); return; }
            if (whole is not null) Self.Forward(whole);
        });
        Receive<RequestFailed>(f => Fail($"request {f.RequestId} failed at stage {f.Stage}: {f.Reason}"));
        Receive<Terminated>(t => Fail($"request {request.RequestId} failed: stage {watched.GetValueOrDefault(t.ActorRef, t.ActorRef.Path.ToString())} was lost (node stopped or unreachable)"));
        Receive<ReceiveTimeout>(_ => Fail($"request {request.RequestId} made no progress for {stallTimeout.TotalSeconds:0.#} s after {_steps.Count} step(s); " +
                                          $"stages: {string.Join(" -> ", stages.Select(s => s.Device))}"));
    }
}
