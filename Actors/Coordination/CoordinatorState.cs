using ShardPipe.Messages;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// The coordinator's decisions, without the actor, in three parts by concern: the <see cref="Registry"/> of workers
/// and nodes (<see cref="WorkerRegistry"/>), the <see cref="Model"/>'s load and recovery (<see cref="ModelTracker"/>:
/// adoption, losses, re-planning), and <see cref="Admission"/> of requests (<see cref="AdmissionQueue{TRequest,TCaller}"/>).
/// This class joins them where a decision needs two, and answers status. Each part is tested with plain xunit; the
/// actor only moves messages and keeps timers.
/// </summary>
public sealed class CoordinatorState<TRequest, TCaller> where TCaller : notnull
{
    public WorkerRegistry Registry { get; }
    public ModelTracker Model { get; } = new();
    public AdmissionQueue<TRequest, TCaller> Admission { get; }

    public CoordinatorState(int protocolVersion, long maxFrameSize, int maxInFlight, int maxQueued)
    {
        Registry = new WorkerRegistry(protocolVersion, maxFrameSize);
        Admission = new AdmissionQueue<TRequest, TCaller>(maxInFlight, maxQueued);
    }

    public ClusterState State => Model.State;

    /// <summary>Workers are gone (their node crashed, was cut off, or left): out of the registry, and what it means for the model.</summary>
    public Loss Lose(IReadOnlyCollection<string> paths)
    {
        var known = paths.Where(Registry.Remove).ToList();
        return known.Count == 0 ? Loss.Nothing : Model.Lose(known);
    }

    /// <summary>A slice arrived from the worker at <paramref name="path"/>: the served model once it was the last.</summary>
    public ModelRecord? SliceLoaded(string path, SliceLoaded s) => Model.SliceLoaded(path, s, p => Registry.Worker(p)?.ToString());

    /// <summary>How a worker is named in logs and errors: node/device, else the stage's device, else its path.</summary>
    public string Describe(string workerPath) => Registry.Worker(workerPath)?.ToString()
        ?? Model.Loaded?.Stages.FirstOrDefault(s => s.WorkerPath == workerPath)?.Device ?? workerPath;

    public ClusterStatus Status(string requestId)
    {
        var loaded = Model.Loaded;
        var workers = Registry.Workers;
        return new(requestId, State, loaded?.Folder ?? Model.Pending?.Model,
            workers.Select(w => w.Node).Distinct().ToArray(),
            loaded?.Devices ?? workers.Select(w => new DeviceUsage(w.ToString(), 0, 0, w.Budget)).ToArray(),
            loaded?.Stages ?? Array.Empty<StageInfo>(),
            loaded?.DeviceMap ?? Array.Empty<DeviceMapEntry>(),
            Model.Failure,
            Registry.Refused.ToArray(),
            loaded?.PlanEpoch ?? Model.Pending?.Epoch ?? 0,
            Admission.InFlight,
            Admission.Queued,
            loaded?.Recoveries > 0 ? loaded.Moved : null,
            loaded?.Recoveries ?? 0,
            Registry.Timings());
    }
}
