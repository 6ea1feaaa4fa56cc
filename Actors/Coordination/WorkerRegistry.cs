using ShardPipe.Messages;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Coordination;

/// <summary>A registered device worker, known by its actor path.</summary>
public sealed record WorkerInfo(string Path, string Node, string Device, long Budget, bool HasLocalCheckpoints)
{
    public DeviceId Id => DeviceId.Parse($"{Node}/{Device}");
    public override string ToString() => $"{Node}/{Device}";
}

/// <summary>What a registration comes to.</summary>
public abstract record Registration
{
    /// <summary>New devices joined (possibly none, for a repeated registration).</summary>
    public sealed record Accepted(IReadOnlyList<WorkerInfo> Joined, IReadOnlyList<RefusedDevice> RefusedDevices) : Registration;
    /// <summary>The whole node is refused (its wire settings differ from the cluster's).</summary>
    public sealed record Refused(string Reason) : Registration;
}

/// <summary>
/// The coordinator's membership view, without the actor: the device workers registered (by actor path, with the node
/// address each lives on), the devices refused, the node timings reported, and which nodes announced a graceful leave
/// or were found unreachable. Node addresses are strings (<c>akka.tcp://shardpipe@host:port</c>). Pure.
/// </summary>
public sealed class WorkerRegistry
{
    private readonly int _protocolVersion;
    private readonly long _maxFrameSize;
    private readonly List<WorkerInfo> _workers = new();
    private readonly Dictionary<string, string> _nodeOf = new(StringComparer.Ordinal); // worker path → node address
    private readonly Dictionary<string, RefusedDevice> _refused = new(StringComparer.Ordinal);
    private readonly Dictionary<string, StageTiming> _timings = new(StringComparer.Ordinal);
    private readonly Dictionary<string, double> _speeds = new(StringComparer.Ordinal); // worker path → bytes/s its node reported
    private readonly HashSet<string> _leaving = new(StringComparer.Ordinal);
    private readonly HashSet<string> _unreachable = new(StringComparer.Ordinal);

    public WorkerRegistry(int protocolVersion, long maxFrameSize)
    {
        _protocolVersion = protocolVersion;
        _maxFrameSize = maxFrameSize;
    }

    public IReadOnlyList<WorkerInfo> Workers => _workers;
    public IReadOnlyCollection<RefusedDevice> Refused => _refused.Values;
    public WorkerInfo? Worker(string path) => _workers.FirstOrDefault(w => w.Path == path);

    /// <summary>
    /// A node's registration (the caller ignores one from an <see cref="IsUnreachable"/> node): refused as a whole when
    /// its protocol version or frame size differ; otherwise each of its devices joins unless the node says it cannot compute on it (kept as
    /// refused, for status) or it is known.
    /// </summary>
    public Registration Register(RegisterWorker r, string nodeAddress)
    {
        if (r.Devices.All(d => _workers.Any(w => w.Path == d.ActorPath)))
        {
            NoteTiming(r); // a repeat: only the node's timing changes
            return new Registration.Accepted(Array.Empty<WorkerInfo>(), Array.Empty<RefusedDevice>());
        }
        if (r.ProtocolVersion != _protocolVersion)
            return new Registration.Refused($"protocol version {r.ProtocolVersion}, the cluster speaks {_protocolVersion}");
        if (r.MaxFrameSize != _maxFrameSize)
            return new Registration.Refused($"maximum-frame-size {r.MaxFrameSize} bytes, the cluster uses {_maxFrameSize}");
        var joined = new List<WorkerInfo>();
        var refused = new List<RefusedDevice>();
        foreach (var d in r.Devices)
        {
            string name = $"{r.NodeName}/{d.Device}";
            string? problem = d.Unusable ?? DeviceProblem(r.NodeName, d);
            if (problem is not null)
            {
                var entry = new RefusedDevice(name, problem);
                _refused[name] = entry;
                refused.Add(entry);
                continue;
            }
            if (_workers.Any(w => w.Path == d.ActorPath)) continue;
            var worker = new WorkerInfo(d.ActorPath, r.NodeName, d.Device, d.BudgetBytes, r.LocalModelRoots.Length > 0);
            _workers.Add(worker);
            _nodeOf[worker.Path] = nodeAddress;
            _refused.Remove(name);
            joined.Add(worker);
        }
        NoteTiming(r);
        return new Registration.Accepted(joined, refused);
    }

    /// <summary>A node announced a graceful leave: its workers, when they go, have left rather than been lost.</summary>
    public void NodeLeaving(string nodeAddress) => _leaving.Add(nodeAddress);

    public bool IsLeaving(string nodeAddress) => _leaving.Contains(nodeAddress);

    /// <summary>Its workers are lost until the failure detector says otherwise: its registrations are ignored.</summary>
    public bool IsUnreachable(string nodeAddress) => _unreachable.Contains(nodeAddress);

    /// <summary>The failure detector gave up on a node: returns its workers (lost; the caller removes them).</summary>
    public IReadOnlyList<string> NodeUnreachable(string nodeAddress)
    {
        _unreachable.Add(nodeAddress);
        return WorkersOn(nodeAddress);
    }

    /// <summary>A node is reachable again, or was removed: its workers may register again.</summary>
    public void NodeBack(string nodeAddress) => _unreachable.Remove(nodeAddress);

    public IReadOnlyList<string> WorkersOn(string nodeAddress) =>
        _workers.Where(w => _nodeOf.GetValueOrDefault(w.Path) == nodeAddress).Select(w => w.Path).ToList();

    /// <summary>The node address a registered worker lives on.</summary>
    public string? NodeOf(string path) => _nodeOf.GetValueOrDefault(path);

    /// <summary>The cluster addresses of the node named <paramref name="node"/> (as its workers registered it): what a drain tells to leave; empty when none of its workers is registered.</summary>
    public IReadOnlyList<string> AddressesOf(string node) =>
        Workers.Where(w => w.Node == node).Select(w => NodeOf(w.Path)).OfType<string>().Distinct().ToList();

    /// <summary>A worker is gone; false when it was not registered.</summary>
    public bool Remove(string path)
    {
        var worker = Worker(path);
        if (worker is null) return false;
        _workers.Remove(worker);
        _nodeOf.Remove(path);
        _timings.Remove(path);
        _speeds.Remove(path);
        return true;
    }

    /// <summary>The last timing and speed each worker's node reported, for status.</summary>
    public DeviceTiming[] Timings() =>
        _workers.Where(w => _timings.ContainsKey(w.Path) || _speeds.ContainsKey(w.Path))
            .Select(w => new DeviceTiming(w.ToString(), _timings.GetValueOrDefault(w.Path) ?? new StageTiming(0, 0, 0), _speeds.TryGetValue(w.Path, out double s) ? s : null)).ToArray();

    /// <summary>The last speed each registered worker's node reported (bytes of weights per second), for the planner; workers that sent none are absent.</summary>
    public IReadOnlyDictionary<DeviceId, double> Speeds() =>
        _workers.Where(w => _speeds.ContainsKey(w.Path)).ToDictionary(w => w.Id, w => _speeds[w.Path]);

    /// <summary>Keeps the node timing and speed a registration reports, for the devices that are workers (a speed that is not a positive number is ignored: the node counts as average).</summary>
    private void NoteTiming(RegisterWorker r)
    {
        foreach (var d in r.Devices)
        {
            if (!_workers.Any(w => w.Path == d.ActorPath)) continue;
            if (r.Timing is { } timing) _timings[d.ActorPath] = timing;
            if (r.Speed is { } speed && double.IsFinite(speed) && speed > 0) _speeds[d.ActorPath] = speed;
        }
    }

    private static string? DeviceProblem(string node, WorkerDevice d)
    {
        if (string.IsNullOrEmpty(node) || node.Contains('/')) return $"node name '{node}' is empty or contains '/'";
        if (d.BudgetBytes < 0) return $"negative budget {d.BudgetBytes}";
        try
        {
            var id = DeviceId.Parse(d.Device);
            return id.Node is not null ? $"'{d.Device}' is not a device of one node (cpu, disk, cuda:N)" : null;
        }
        catch (InvalidInputException ex) { return ex.Message; }
    }
}
