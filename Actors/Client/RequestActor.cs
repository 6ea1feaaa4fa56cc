using ShardPipe.Modeling.Core;
using System.Diagnostics;
using Akka.Actor;
using Akka.Remote;
using ShardPipe.Actors.Membership;
using ShardPipe.Actors.Settings;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;
using ShardPipe.Actors.Transport;

namespace ShardPipe.Actors.Client;

/// <summary>
/// One request, caller side, and the keeper of its history: sends it, collects streamed tokens (numbered steps,
/// checked: a gap or a duplicate is a typed error) or the forward logits, and watches every stage's worker. When a
/// stage is lost or the cluster says the model is recovering, it waits until the model is served again and resumes
/// the request there — the prompt plus the tokens delivered so far are prefilled and decoding continues at the next
/// step, under a new attempt id so that late messages of the old route are dropped — at most
/// <see cref="ClientSettings.MaxRecoveries"/> times. It completes with the outcome, or with a
/// <see cref="ClusterException"/> naming the stage that died, failed or stalled.
/// </summary>
public sealed class RequestActor : ReceiveActor, IWithTimers
{
    public ITimerScheduler Timers { get; set; } = null!;

    private sealed record PollStatus;
    private sealed record RecoveryDeadline(int Fault);
    /// <summary>The attempt's stall timer ran out: nothing of it arrived for the stall timeout.</summary>
    private sealed record Stalled(string AttemptId);
    private sealed record StageNodeProbed(string AttemptId, Address Node, IReadOnlyList<ProbeResult> Results);

    private readonly List<long[]> _steps = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly IActorRef _coordinator;
    private readonly IClientRequest _request;
    private readonly TimeSpan _stallTimeout;
    private readonly Action<long[]>? _onTokens;
    private readonly TaskCompletionSource<RequestOutcome> _done;
    private readonly ClientSettings _settings;
    private readonly Dictionary<IActorRef, StageInfo> _watched = new();
    private readonly HashSet<string> _lostStages = new(StringComparer.Ordinal);
    private readonly ChunkAssembler _chunks = new();
    private IReadOnlyList<StageInfo> _stages;
    private string _attemptId;
    private int _faults;
    private int _attempts; // attempt ids: a fault's recovery may take more than one (a resumed attempt turned back before it progressed)
    private bool _progressed; // the current attempt delivered something (tokens, logits, its end)
    private TimeSpan _faultAt; // when the fault being recovered happened (its recovery's deadline runs from there)
    private double _prefill;
    private int _proposed, _accepted; // speculative decoding: draft tokens proposed and accepted, over every attempt
    private string _lastFault = "";

    public RequestActor(IActorRef coordinator, IClientRequest request, IReadOnlyList<StageInfo> stages, TimeSpan stallTimeout,
        Action<long[]>? onTokens, TaskCompletionSource<RequestOutcome> done, ClientSettings settings)
    {
        _coordinator = coordinator;
        _request = request;
        _stages = stages;
        _stallTimeout = stallTimeout;
        _onTokens = onTokens;
        _done = done;
        _settings = settings;
        _attemptId = request.RequestId;
        Running();
    }

    protected override void PreStart()
    {
        // An association to a stage's node that ends or fails: its port is probed (CrashProbe); refused on every try
        // means the process is gone, and the stage is lost now rather than when the watch's failure detector gives up.
        Context.System.EventStream.Subscribe(Self, typeof(DisassociatedEvent));
        Context.System.EventStream.Subscribe(Self, typeof(AssociationErrorEvent));
        Send(_request);
    }

    protected override void PostStop() => Context.System.EventStream.Unsubscribe(Self);

    private readonly HashSet<string> _probing = new(StringComparer.Ordinal);

    private void SuspectStageNode(Address? remote)
    {
        var node = _watched.Keys.Select(r => r.Path.Address).FirstOrDefault(a => a.Host == remote?.Host && a.Port == remote?.Port);
        if (node?.Host is not { } host || node.Port is not { } port || !_probing.Add($"{_attemptId} {node}")) return;
        string attempt = _attemptId;
        CrashProbe.Probe(host, port)
            .PipeTo(Self, success: r => new StageNodeProbed(attempt, node, r), failure: _ => new StageNodeProbed(attempt, node, new[] { ProbeResult.Failed }));
    }

    private void Unwatch()
    {
        foreach (var r in _watched.Keys) Context.Unwatch(r);
        _watched.Clear();
    }

    private void Send(IClientRequest attempt)
    {
        var provider = ((ExtendedActorSystem)Context.System).Provider;
        Unwatch();
        foreach (var s in _stages)
        {
            var r = provider.ResolveActorRef(s.WorkerPath);
            if (_watched.TryAdd(r, s)) Context.Watch(r);
        }
        Progressed();
        _coordinator.Tell(attempt);
    }

    /// <summary>
    /// (Re)starts the stall timer of the current attempt: the request fails if nothing of it arrives for the stall timeout.
    /// A timer rather than the actor's receive timeout, which every message resets — and a request hears more than its
    /// own traffic: association events of any node (the event stream; they recur while anything in the system retries a
    /// departed node's address) and late messages of replaced attempts. With the receive timeout, a stalled request could
    /// go on forever while such messages kept coming (RequestRecoveryCountTests shows it with one every 100 ms).
    /// </summary>
    private void Progressed() => Timers.StartSingleTimer("stall", new Stalled(_attemptId), _stallTimeout);

    /// <summary>A generation's outcome from the steps delivered (in order, each one token per row).</summary>
    private void FinishGeneration()
    {
        var rows = Enumerable.Range(0, _request.InputIds.Length).Select(b => _steps.Select(s => s[b]).ToArray()).ToArray();
        Finish(new RequestOutcome(rows, null, _steps.Count, _prefill, _clock.Elapsed.TotalSeconds - _prefill) { Proposed = _proposed, Accepted = _accepted });
    }

    private void Finish(RequestOutcome o)
    {
        _done.TrySetResult(o with { RecoveredFaults = _faults });
        Context.Stop(Self);
    }

    private void Fail(string message, bool invalid = false)
    {
        _done.TrySetException(invalid ? new InvalidInputException(message) : new ClusterException(message));
        Context.Stop(Self);
    }

    /// <summary>Messages of an earlier attempt (its route was replaced) are late: dropped.</summary>
    private bool Current(string requestId) => requestId == _attemptId;

    private void Running()
    {
        Receive<TokensGenerated>(t =>
        {
            if (!Current(t.RequestId)) return;
            if (t.Step != _steps.Count)
            {
                Fail($"request {_request.RequestId}: step {t.Step} arrived when step {_steps.Count} was expected ({(t.Step < _steps.Count ? "a duplicate" : "a gap")}); the stream is not accepted");
                return;
            }
            if (_steps.Count == 0) _prefill = _clock.Elapsed.TotalSeconds;
            _progressed = true;
            Progressed();
            // A speculative step delivers several steps' tokens at once (numbered from t.Step on).
            _steps.Add(t.Tokens);
            _onTokens?.Invoke(t.Tokens);
            foreach (var more in t.More ?? Array.Empty<long[]>())
            {
                _steps.Add(more);
                _onTokens?.Invoke(more);
            }
            _proposed += t.Proposed;
            _accepted += t.Accepted;
        });
        Receive<GenerationDone>(d =>
        {
            if (!Current(d.RequestId)) return;
            if (d.Steps != _steps.Count)
            {
                Fail($"request {_request.RequestId}: the pipeline reports {d.Steps} steps but {_steps.Count} arrived");
                return;
            }
            FinishGeneration();
        });
        Receive<ForwardResult>(f =>
        {
            if (!Current(f.RequestId)) return;
            using var t = TensorWire.ToTensor(f.LastLogits);
            var logits = Enumerable.Range(0, (int)t.Shape()[0]).Select(b => t[b].data<float>().ToArray()).ToArray();
            Finish(new RequestOutcome(Array.Empty<long[]>(), logits, 0, _clock.Elapsed.TotalSeconds, 0));
        });
        Receive<MessageChunk>(Reassemble);
        Receive<RequestFailed>(f =>
        {
            if (!Current(f.RequestId)) return;
            if (f.Retryable) Recover($"stage {f.Stage}: {f.Reason}", sameFault: _faults > 0 && !_progressed);
            else Fail($"request {_request.RequestId} failed at stage {f.Stage}: {f.Reason}", f.Invalid);
        });
        Receive<DisassociatedEvent>(e => SuspectStageNode(e.RemoteAddress));
        Receive<AssociationErrorEvent>(e => SuspectStageNode(e.RemoteAddress));
        Receive<StageNodeProbed>(p =>
        {
            _probing.Remove($"{p.AttemptId} {p.Node}");
            if (!Current(p.AttemptId) || p.Results.Any(r => r != ProbeResult.Refused)) return;
            var lost = _watched.Where(w => w.Key.Path.Address.Equals(p.Node)).Select(w => w.Value).ToList();
            if (lost.Count == 0) return;
            foreach (var st in lost) _lostStages.Add(st.WorkerPath);
            Recover($"stage {lost[0].Device} was lost (its node's process is gone: connects refused)");
        });
        Receive<Terminated>(t =>
        {
            if (!_watched.TryGetValue(t.ActorRef, out var stage)) return;
            _lostStages.Add(stage.WorkerPath);
            Recover($"stage {stage.Device} was lost (node stopped or unreachable)");
        });
        Receive<Stalled>(st =>
        {
            if (Current(st.AttemptId)) Fail($"request {_request.RequestId} made no progress for {_stallTimeout.TotalSeconds:0.#} s after {_steps.Count} step(s); " +
                                          $"stages: {string.Join(" -> ", _stages.Select(s => s.Device))}");
        });
        Receive<ClusterStatus>(_ => { });
        Receive<PollStatus>(_ => { });
        Receive<RecoveryDeadline>(_ => { });
    }

    private void Reassemble(MessageChunk c)
    {
        Progressed(); // a large answer arriving in pieces
        object? whole;
        try { whole = _chunks.Add(c); }
        catch (ProtocolException ex) { Fail($"request {_request.RequestId}: {ex.Message}"); return; }
        if (whole is not null) Self.Forward(whole);
    }

    /// <summary>
    /// A fault the cluster recovers from: wait until the model is served again, then resume (bounded). With
    /// <paramref name="sameFault"/> — a resumed attempt turned back (retryable) before it delivered anything: the cluster
    /// was not quite serving yet, e.g. a stage still taking up its new layers — the wait goes on as part of the fault
    /// being recovered: it is not counted again (RecoveredFaults, max-recoveries) and keeps that fault's deadline.
    /// </summary>
    private void Recover(string fault, bool sameFault = false)
    {
        _lastFault = fault;
        if (_request is Generate { MaxNewTokens: > 0 } g && _steps.Count >= g.MaxNewTokens)
        {
            // Every token already came (the fault fell between the last step and the pipeline's end of generation): the
            // outcome is whole, and a resume of no steps left would be refused as invalid.
            if (!sameFault) _faults++;
            FinishGeneration();
            return;
        }
        if (!sameFault && ++_faults > _settings.MaxRecoveries)
        {
            Fail($"request {_request.RequestId} failed after {_faults - 1} recoveries (shardpipe.client.max-recoveries): {fault}");
            return;
        }
        if (!sameFault) _faultAt = _clock.Elapsed;
        var left = _settings.RecoveryTimeout - (_clock.Elapsed - _faultAt);
        if (left <= TimeSpan.Zero)
        {
            RecoveryTimedOut(null);
            return;
        }
        Unwatch();
        Timers.Cancel("stall");
        _attemptId = $"{_request.RequestId}~{++_attempts}"; // anything of the old attempt that still arrives is dropped
        Timers.StartPeriodicTimer("poll", new PollStatus(), TimeSpan.Zero, _settings.StatusPollInterval);
        Timers.StartSingleTimer("deadline", new RecoveryDeadline(_faults), left);
        Become(Recovering);
    }

    /// <summary>The fault being recovered (<see cref="_lastFault"/>) ran past recovery-timeout; <paramref name="lastState"/>: the cluster's last answer, where one came.</summary>
    private void RecoveryTimedOut(string? lastState) =>
        Fail($"request {_request.RequestId} was interrupted ({_lastFault}) and the model was not served again within " +
             $"{_settings.RecoveryTimeout.TotalSeconds:0} s (shardpipe.client.recovery-timeout){(lastState is null ? "" : $"; last state {lastState}")}");

    private void Recovering()
    {
        string lastState = "unknown";
        Receive<PollStatus>(_ => _coordinator.Tell(new GetStatus(_attemptId), Self));
        Receive<ClusterStatus>(s =>
        {
            lastState = s.Detail is { } d ? $"{s.StateName}: {d}" : s.StateName;
            // Still on its way back (or served on a route with a stage this request saw die): keep waiting. Any other
            // state answers for itself: ready serves the resumed request, empty or failed refuses it with the reason.
            if (s.State is ClusterState.Starting or ClusterState.Recovering or ClusterState.Degraded or ClusterState.Loading or ClusterState.Moving) return;
            if (s.State == ClusterState.Ready && s.Stages.Any(st => _lostStages.Contains(st.WorkerPath))) return;
            Timers.Cancel("poll");
            Timers.Cancel("deadline");
            _stages = s.Stages;
            Become(Running);
            _progressed = false;
            Send(Resumed());
        });
        Receive<RecoveryDeadline>(d =>
        {
            if (d.Fault == _faults) RecoveryTimedOut(lastState);
        });
        // Late messages of the interrupted attempt.
        Receive<TokensGenerated>(_ => { });
        Receive<GenerationDone>(_ => { });
        Receive<ForwardResult>(_ => { });
        Receive<RequestFailed>(_ => { });
        Receive<MessageChunk>(_ => { });
        Receive<Terminated>(_ => { });
        Receive<Stalled>(_ => { });
        Receive<DisassociatedEvent>(_ => { });
        Receive<AssociationErrorEvent>(_ => { });
        Receive<StageNodeProbed>(p => _probing.Remove($"{p.AttemptId} {p.Node}"));
    }

    /// <summary>The request as it continues: forward passes run again; a generation carries the tokens delivered so far.</summary>
    private IClientRequest Resumed() => _request switch
    {
        Generate g => g with { RequestId = _attemptId, Resume = _steps.Count > 0 ? _steps.ToArray() : null },
        Forward f => f with { RequestId = _attemptId },
        _ => throw new UnsupportedException($"cannot resume a {_request.GetType().Name}"),
    };
}
