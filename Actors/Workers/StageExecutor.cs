using System.Diagnostics;
using Akka.Actor;
using Akka.Event;
using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Transport;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// A device worker's loaded stage, its outgoing activation links, and its steps. Steps arrive as actor messages (the
/// worker's thread) and over activation links (a link's reader thread); both only queue them in the stage's
/// <see cref="StepBatcher"/>. One compute thread per stage takes what may run together and runs it as one merged step
/// (continuous batching: a step of every request waiting, one read of the weights), so a step that arrives while
/// another runs joins the next one. Merged outputs bound for the same stage travel on together as one
/// <see cref="StageBatch"/>. Runs, cache releases and link changes hold one lock, as the actor's mailbox would.
/// </summary>
public sealed class StageExecutor : IDisposable
{
    private readonly object _gate = new();   // the runner and the links
    private readonly object _queue = new();  // the batcher (held briefly: arrivals never wait behind a step)
    private readonly NodeSettings _settings;
    private readonly string _stage;
    private readonly string _selfPath;
    private readonly NodeDiagnostics _diagnostics;
    private readonly FaultHooks _faults;
    private readonly IActorRef _self;
    private readonly IActorRefProvider _provider;
    private readonly ILoggingAdapter _log;
    private readonly ActivationLinks _links;
    private readonly StepBatcher _batcher;
    private readonly Thread _thread;
    private volatile StageRunner? _runner;
    private bool _stopping;

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
        _batcher = new StepBatcher(settings.Batching);
        _thread = new Thread(ComputeLoop) { IsBackground = true, Name = $"stage {stage}" };
        _thread.Start();
    }

    // The worker's link messages (from its own thread): the links are used by the compute thread too.
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
        Wake();
    }

    /// <summary>Frees the stage (its KV caches) and closes its links; steps still waiting fail (retryable) when next taken.</summary>
    /// <summary>The installed stage's prefix cache (its figures are read without the lock: counters for status).</summary>
    public PrefixStage? Prefix => _runner?.Prefix;

    public void Uninstall()
    {
        lock (_gate)
        {
            _links.CloseAll();
            _runner?.Dispose();
            _runner = null;
        }
    }

    /// <summary>A request ended: its cache is freed and its waiting steps dropped (re-entrant: the compute thread calls it under the lock).</summary>
    public void Release(string requestId)
    {
        lock (_gate) _runner?.Release(requestId);
        lock (_queue) _batcher.Released(requestId);
        Wake(); // a first stage may have been holding new requests for this one's group
    }

    public int EvictIdle(TimeSpan idle)
    {
        lock (_gate) return _runner?.EvictIdle(idle) ?? 0;
    }

    /// <summary>
    /// A message from an activation link's reader thread: steps are queued for the compute thread when the stage is
    /// loaded; anything else (or a step before the slice is ready) goes to the worker as an actor message.
    /// </summary>
    public void Deliver(object message, IActorRef from)
    {
        if (_runner is not null)
        {
            if (message is StageInput input)
            {
                Enqueue(new[] { input }, Array.Empty<string>());
                return;
            }
            if (message is StageBatch batch)
            {
                Run(batch);
                return;
            }
        }
        _self.Tell(message, from);
    }

    /// <summary>A step that arrived as an actor message (on the worker's thread).</summary>
    public void Run(StageInput input)
    {
        if (_runner is null) Fail(input, "no model slice is loaded on this stage", retryable: true);
        else Enqueue(new[] { input }, Array.Empty<string>());
    }

    /// <summary>Steps merged at the stage before, with the requests that ended there.</summary>
    public void Run(StageBatch batch)
    {
        if (batch.Released.Length > 0)
            lock (_gate)
                foreach (var id in batch.Released) _runner?.Release(id);
        Enqueue(batch.Steps, batch.Released);
    }

    private void Enqueue(IReadOnlyList<StageInput> steps, IReadOnlyList<string> released)
    {
        var now = DateTime.UtcNow;
        lock (_queue)
        {
            foreach (var id in released) _batcher.Released(id);
            foreach (var s in steps) _batcher.Add(s, now);
            Monitor.Pulse(_queue);
        }
    }

    private void Wake()
    {
        lock (_queue) Monitor.Pulse(_queue);
    }

    /// <summary>The stage's compute thread: takes what may run together, runs it, and waits for more.</summary>
    private void ComputeLoop()
    {
        Calibrate();
        while (true)
        {
            IReadOnlyList<StageInput> batch;
            lock (_queue)
            {
                while (true)
                {
                    if (_stopping) return;
                    var now = DateTime.UtcNow;
                    try { batch = _batcher.Take(now); }
                    catch (Exception ex)
                    {
                        // Never the end of the stage's thread: what waits fails (its callers hear why) and the stage runs on.
                        _log.Error(ex, "{0}: the waiting steps could not be batched; they fail", _stage);
                        batch = _batcher.DropAll();
                        foreach (var s in batch) Fail(s, $"{_stage}: the step could not be scheduled ({ex.Message})");
                        continue;
                    }
                    if (batch.Count > 0) break;
                    var wait = _batcher.NextDeadline(now) is { } at ? at - now : Timeout.InfiniteTimeSpan;
                    Monitor.Wait(_queue, wait == Timeout.InfiniteTimeSpan ? wait : TimeSpan.FromMilliseconds(Math.Max(1, wait.TotalMilliseconds)));
                }
            }
            try
            {
                lock (_gate) RunLocked(batch);
            }
            catch (Exception ex)
            {
                _log.Error(ex, "{0}: a step could not be handled", _stage); // never the end of the stage's thread
            }
        }
    }

    private void RunLocked(IReadOnlyList<StageInput> batch)
    {
        if (_runner is null)
        {
            foreach (var s in batch) Fail(s, "no model slice is loaded on this stage", retryable: true);
            return;
        }
        var steps = new List<StageInput>(batch.Count);
        foreach (var input in batch)
        {
            // A late step of an old route (the plan changed under it): dropped; its caller has resumed it under the new epoch.
            if (input.PlanEpoch == _runner.Epoch) steps.Add(input);
            else _log.Debug("{0}: dropped a step of request {1} from epoch {2} (this stage serves epoch {3})", _stage, input.RequestId, input.PlanEpoch, _runner.Epoch);
        }
        if (steps.Count == 0) return;
        IReadOnlyList<Outgoing> outgoing;
        try
        {
            outgoing = Step(steps);
        }
        catch (Exception ex) when (steps.Count > 1)
        {
            // One request's bad step must not fail the others merged with it: the caches were rolled back; each runs alone.
            _log.Warning("{0}: a merged step of {1} requests failed ({2}); running them one by one", _stage, steps.Count, ShardPipeException.Describe(ex));
            var each = new List<Outgoing>();
            foreach (var input in steps)
            {
                try { each.AddRange(Step(new[] { input })); }
                catch (Exception one) { Failed(input, one); }
            }
            outgoing = each;
        }
        catch (Exception ex)
        {
            Failed(steps[0], ex);
            return;
        }
        Send(outgoing);
    }

    private IReadOnlyList<Outgoing> Step(IReadOnlyList<StageInput> steps)
    {
        _faults.BeforeStep?.Invoke();
        PinThread();
        using var cores = _settings.ComputeShare ? CoreArbiter.Shared.Enter(ThreadLimit) : null;
        if (cores is not null) UseThreads(cores.Threads);
        _runner!.BetweenLayers = cores is null ? null : () => UseThreads(cores.Current);
        long started = Stopwatch.GetTimestamp();
        var outgoing = _runner.Run(steps);
        if (_settings.DebugComputeSlowdown > 1) // benchmarks' simulated slower machine: sleep, so the cores stay free for the other nodes
            Thread.Sleep(Stopwatch.GetElapsedTime(started) * (_settings.DebugComputeSlowdown - 1));
        _diagnostics.StepTimes.Record(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        _diagnostics.StepRows.Record(steps.Sum(s => s.AttentionMask.Length));
        return outgoing;
    }

    private void Failed(StageInput input, Exception ex)
    {
        _log.Warning("{0}: request {1} failed: {2}", _stage, input.RequestId, ex.Message);
        Release(input.RequestId);
        Fail(input, ShardPipeException.Describe(ex));
    }

    /// <summary>
    /// Sends a step's outputs: the steps bound for each stage first (the pipeline's critical path), together as one
    /// <see cref="StageBatch"/> with the releases bound there when there are several or both; then the rest in order.
    /// Steps and releases for this stage itself stay here.
    /// </summary>
    private void Send(IReadOnlyList<Outgoing> outgoing)
    {
        var steps = new Dictionary<string, List<StageInput>>(StringComparer.Ordinal);
        foreach (var o in outgoing)
            if (o.Message is StageInput s)
            {
                if (!steps.TryGetValue(o.Path, out var list)) steps[o.Path] = list = new List<StageInput>();
                list.Add(s);
            }
        var folded = new HashSet<(string, string)>();
        foreach (var (path, list) in steps)
        {
            var released = outgoing.Where(o => o.Path == path && o.Message is ReleaseRequest).Select(o => ((ReleaseRequest)o.Message).RequestId).ToArray();
            foreach (var id in released) folded.Add((path, id));
            if (path == _selfPath)
            {
                Run(new StageBatch(list.ToArray(), released)); // as if it had come from another stage
                continue;
            }
            IShardPipeMessage message = list.Count == 1 && released.Length == 0 ? list[0] : new StageBatch(list.ToArray(), released);
            if (_links.TrySend(path, message)) continue; // straight to the next stage's node
            _provider.ResolveActorRef(path).TellChunked(message, _self); // large activations travel in chunks to another node
        }
        foreach (var o in outgoing)
        {
            if (o.Message is StageInput) continue;
            if (o.Message is ReleaseRequest rel)
            {
                if (folded.Contains((o.Path, rel.RequestId))) continue;
                if (o.Path == _selfPath)
                {
                    Release(rel.RequestId);
                    continue;
                }
            }
            _provider.ResolveActorRef(o.Path).TellChunked(o.Message, _self);
        }
    }

    private double _calibratedSpeed; // 0 = not (yet) measured

    /// <summary>This node's speed from the calibration at start (bytes of weights per second), null until it ran or when it failed.</summary>
    public double? CalibratedSpeed => Volatile.Read(ref _calibratedSpeed) is > 0 and var s ? s : null;

    /// <summary>The speed calibration, on the compute thread pinned as its steps will be (<see cref="DeviceSpeed"/>).</summary>
    private void Calibrate()
    {
        try
        {
            PinThread();
            double speed = DeviceSpeed.Calibrate(_settings.DebugComputeSlowdown);
            Volatile.Write(ref _calibratedSpeed, speed);
            _log.Info("{0}: calibrated at {1}", _stage, DeviceSpeed.Format(speed));
        }
        catch (Exception ex)
        {
            _log.Warning("{0}: speed calibration failed ({1}); the planner counts this node as average", _stage, ex.Message);
        }
    }

    [ThreadStatic] private static bool _threadPinned;
    [ThreadStatic] private static int _threadsSet; // this thread's libtorch intra-op setting, as last set here (0 = never)

    /// <summary>The node's own cap on a step's threads (<see cref="CoreArbiter.Threads"/>): compute-threads, the pinned cores; 0 = none.</summary>
    private int ThreadLimit
    {
        get
        {
            int limit = _settings.ComputeThreads;
            if (_settings.ComputeCores.Count > 0) limit = limit > 0 ? Math.Min(limit, _settings.ComputeCores.Count) : _settings.ComputeCores.Count;
            return limit;
        }
    }

    /// <summary>
    /// Sets the compute thread's libtorch intra-op threads (OpenMP's setting is the calling thread's own, and the
    /// decode kernels' pool reads it too), only when it changes: other threads keep theirs. The first call reads the
    /// setting first: libtorch initialises a thread's setting lazily, at its first read or parallel loop, from the
    /// process-wide value — which would undo a setting made before it.
    /// </summary>
    private static void UseThreads(int threads)
    {
        if (_threadsSet == threads) return;
        if (_threadsSet == 0) TorchSharp.torch.get_num_threads();
        TorchSharp.torch.set_num_threads(threads);
        _threadsSet = threads;
    }

    /// <summary>
    /// Steps run on the stage's compute thread: its first step pins it to <c>compute-cores</c> (with the libtorch threads
    /// it starts; once; a refusal is logged).
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

    /// <summary>Stops the compute thread (the worker stopped).</summary>
    public void Dispose()
    {
        lock (_queue)
        {
            _stopping = true;
            Monitor.Pulse(_queue);
        }
    }
}
