using Akka.Actor;
using ShardPipe.Actors.Transport;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// The coordinator's references to the registered device workers (by actor path) and its fan-out sends to them:
/// slices of a plan, the commit of a served model, releases of an epoch's slices. Plumbing only; who gets what is
/// decided in <see cref="CoordinatorState{TCaller}"/>.
/// </summary>
public sealed class WorkerRefs
{
    private readonly Dictionary<string, IActorRef> _refs = new(StringComparer.Ordinal);

    public void Add(string path, IActorRef actor) => _refs[path] = actor;
    public void Remove(IEnumerable<string> paths) { foreach (var p in paths) _refs.Remove(p); }
    public bool Has(string path) => _refs.ContainsKey(path);

    /// <summary>The worker an actor that sent a fact is registered as (a fact is trusted by its sender, not by the path it names).</summary>
    public string? PathOf(IActorRef sender) => _refs.FirstOrDefault(kv => kv.Value.Equals(sender)).Key;

    /// <summary>The workers a node's actor serves (one per device it registered).</summary>
    public List<string> PathsOf(IActorRef actor) => _refs.Where(kv => kv.Value.Equals(actor)).Select(kv => kv.Key).ToList();

    public void Tell(string path, object message) { if (_refs.TryGetValue(path, out var r)) r.Tell(message); }

    /// <summary>Each worker's slice (a big model's slice index may exceed one frame: chunked).</summary>
    public void Send(LoadPlan plan) { foreach (var (worker, slice) in plan.Slices) _refs[worker.Path].TellChunked(slice); }

    /// <summary>Every stage worker keeps the served model's record, so that a coordinator elsewhere can serve it again.</summary>
    public void Commit(ModelRecord model)
    {
        var commit = new ModelCommitted(model);
        foreach (var path in model.Stages.Select(s => s.WorkerPath).Distinct())
            if (_refs.TryGetValue(path, out var r)) r.TellChunked(commit);
    }

    /// <summary>Workers (all, or those <paramref name="where"/> says) free their slice of <paramref name="epoch"/> (or any older, as a worker reads it).</summary>
    public void Release(int epoch, Func<string, bool>? where = null)
    {
        foreach (var r in _refs.Where(kv => where?.Invoke(kv.Key) ?? true).Select(kv => kv.Value).Distinct()) r.Tell(new ReleaseSlice(epoch));
    }
}
