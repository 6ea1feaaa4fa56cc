using System.Diagnostics;
using Akka.Actor;
using Akka.Event;
using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// A device worker's loaded stage and its outgoing activation links, behind one lock. The worker actor runs
/// steps that arrive as actor messages on its own thread; a step that arrives over an activation link runs right
/// on the link's reader thread (<see cref="Deliver"/>), so a hop costs one thread wake-up — the kernel's, on the
/// core the sender just left — instead of a second hand-off to the worker's thread. The lock keeps every step,
/// cache release and link change one at a time, as the actor's mailbox would.
/// </summary>
public sealed class StageExecutor
{
    private readonly object _gate = new();
    private readonly NodeSettings _settings;
    private readonly string _stage;
    private readonly string _selfPath;
    private readonly NodeDiagnostics _diagnostics;
    private readonly FaultHooks _faults;
    private readonly IActorRef _self;
    private readonly IActorRefProvider _provider;
    private readonly ILoggingAdapter _log;
    private readonly ActivationLinks _links;
    private StageRunner? _runner;

    public StageExecutor(NodeSettings settings, string stage, IActorRef self, string selfPath, ActorSystem system, ILoggingAdapter log)
    {
        _settings = settings;
        _stage = stage;
        _self = self;
        _selfPath = selfPath;
        _diagnostics = NodeDiagnostics.For(system);
        _faults = FaultHooks.For(system);
        _provider = ((ExtendedActorSystem)system).Provider;
        _log = log;
        _links = new ActivationLinks(settings.Links, log, stage, _diagnostics);
    }

    // The worker's link messages (from its own thread): the links are used by steps on reader threads too.
    public void WantLink(string target, IActorRef targetRef)
    {
        lock (_gate) _links.Want(target, targetRef, _self);
    }

    public void LinkOffered(LinkOffer offer)
    {
        lock (_gate) _links.Offered(offer, _self);
    }

    public void LinkUp(ActivationLinks.Connected c)
    {
        lock (_gate) _links.Up(c);
    }

    public void LinkDown(ActivationLinks.ConnectFailed f)
    {
        lock (_gate) _links.Down(f);
    }

    public void Install(StageRunner runner)
    {
        lock (_gate) _runner = runner;
    }

    /// <summary>Frees the stage (its KV caches) and closes its links.</summary>
    public void Uninstall()
    {
        lock (_gate)
        {
            _links.CloseAll();
            _runner?.Dispose();
            _runner = null;
        }
    }

    public void Release(string requestId)
    {
        lock (_gate) _runner?.Release(requestId);
    }

    public int EvictIdle(TimeSpan idle)
    {
        lock (_gate) return _runner?.EvictIdle(idle) ?? 0;
    }

    /// <summary>
    /// A message from an activation link's reader thread: a step runs here and now when the stage is loaded;
    /// anything else (or a step before the slice is ready) goes to the worker as an actor message.
    /// </summary>
    public void Deliver(object message, IActorRef from)
    {
        if (message is StageInput input)
        {
            lock (_gate)
            {
                if (_runner is not null)
                {
                    RunLocked(input, from);
                    return;
                }
            }
        }
        _self.Tell(message, from);
    }

    /// <summary>A step that arrived as an actor message (on the worker's thread).</summary>
    public void Run(StageInput input, IActorRef from)
    {
        lock (_gate)
        {
            if (_runner is null) Fail(input, "no model slice is loaded on this stage", retryable: true);
            else RunLocked(input, from);
        }
    }

    private void RunLocked(StageInput input, IActorRef from)
    {
        if (input.PlanEpoch != _runner!.Epoch)
        {
            // A late step of an old route (the plan changed under it): dropped; its caller has resumed it under the new epoch.
            _log.Debug("{0}: dropped a step of request {1} from epoch {2} (this stage serves epoch {3})", _stage, input.RequestId, input.PlanEpoch, _runner.Epoch);
            return;
        }
        IReadOnlyList<Outgoing> outgoing;
        try
        {
            _faults.BeforeStep?.Invoke();
            PinThread();
            long started = Stopwatch.GetTimestamp();
            outgoing = _runner!.Run(input);
            _diagnostics.StepTimes.Record(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }
        catch (Exception ex)
        {
            _log.Warning("{0}: request {1} failed: {2}", _stage, input.RequestId, ex.Message);
            _runner!.Release(input.RequestId);
            Fail(input, ex.GetBaseException().Message);
            return;
        }
        foreach (var o in outgoing)
        {
            if (o.Message is ReleaseRequest rel && o.Path == _selfPath) _runner!.Release(rel.RequestId);
            else
            {
                var message = o.Message;
                if (message is StageInput hop && _links.TrySend(o.Path, hop)) continue; // straight to the next stage's node
                var target = _provider.ResolveActorRef(o.Path);
                target.TellChunked(message, _self); // large activations/logits travel in chunks to another node
            }
        }
    }

    [ThreadStatic] private static bool _threadPinned;

    /// <summary>
    /// Steps run on the worker's own thread and on its links' reader threads, each of which serves only this node:
    /// the first step on a thread pins it to <c>compute-cores</c> (once; a refusal is logged once per thread).
    /// </summary>
    private void PinThread()
    {
        if (_threadPinned || _settings.ComputeCores.Count == 0) return;
        _threadPinned = true;
        if (!CpuAffinity.TryPinCurrentThread(_settings.ComputeCores, out var error))
            _log.Warning("{0}: {1}; its steps run unpinned", _stage, error);
    }

    /// <summary>Tells the caller (and the coordinator, which frees the request's slot) that the request failed here.</summary>
    public void Fail(StageInput input, string reason, bool retryable = false)
    {
        var failed = new RequestFailed(input.RequestId, _stage, reason, retryable);
        _provider.ResolveActorRef(input.ReplyTo).Tell(failed);
        if (input.Coordinator is { } c) _provider.ResolveActorRef(c).Tell(failed);
    }
}
