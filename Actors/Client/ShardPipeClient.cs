using Akka.Actor;
using Akka.Configuration;
using ShardPipe.Actors.Membership;
using ShardPipe.Actors.Settings;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Client;

/// <summary>The outcome of a generate or forward request; <see cref="RecoveredFaults"/>: the faults it survived (0 without one).</summary>
public sealed record RequestOutcome(long[][] NewTokens, float[][]? LastLogits, int Steps, double PrefillSeconds, double DecodeSeconds, int RecoveredFaults = 0)
{
    public double TokensPerSecond => Steps > 1 && DecodeSeconds > 0 ? (Steps - 1) / DecodeSeconds : 0;

    /// <summary>Speculative decoding: draft tokens proposed and accepted by the target (0 without speculation).</summary>
    public int Proposed { get; init; }
    public int Accepted { get; init; }
}

/// <summary>
/// Talks to a ShardPipe cluster: load, status, unload, generate and forward. <see cref="Connect"/> reaches it from an
/// ActorSystem of its own that is not a cluster member (its exit or crash never touches the membership) through
/// contact points, moving to the next when one dies. A request whose stage is lost is resumed on the recovered
/// route with the same tokens; every request ends with a result or a typed <see cref="ClusterException"/> naming the
/// stage or node at fault — never a hang.
/// </summary>
public sealed class ShardPipeClient : IAsyncDisposable
{
    private readonly ActorSystem _system;
    private readonly IActorRef _coordinator;
    private readonly bool _ownsSystem;

    public ClientSettings Settings { get; }

    /// <summary>A client over an existing system's path to the coordinator (a node's own proxy).</summary>
    public ShardPipeClient(ActorSystem system, IActorRef coordinator, ClientSettings? settings = null, bool ownsSystem = false)
    {
        _system = system;
        _coordinator = coordinator;
        _ownsSystem = ownsSystem;
        Settings = settings ?? ClientSettings.From(system.Settings.Config);
    }

    /// <summary>
    /// A client that reaches the cluster through <paramref name="contacts"/> (any node; each runs a proxy to the
    /// coordinator). Its ActorSystem uses plain remoting: workers send tokens straight to it, and it is never a member.
    /// </summary>
    public static ShardPipeClient Connect(IReadOnlyList<Address> contacts, Config? extra = null)
    {
        var settings = ClientSettings.From(extra ?? Config.Empty);
        string hostname = settings.Hostname.Length > 0 ? settings.Hostname : LocalAddressToward(contacts[0].Host ?? "127.0.0.1");
        var config = ConfigurationFactory.ParseString($@"
akka.actor.provider = remote
akka.remote.dot-netty.tcp.hostname = ""{hostname}""
akka.remote.dot-netty.tcp.port = 0");
        if (extra is not null) config = extra.WithFallback(config);
        var system = ActorSystem.Create(Roles.SystemName + "-client", Security.ClusterTls.SystemSetup(ReferenceConfig.Over(config), out var tls));
        // Contact points are reached over the client's own transport: TLS (akka.ssl.tcp) when it has a certificate.
        var over = contacts.Select(c => Security.ClusterTls.ForTransport(c, tls is not null)).ToList();
        var contact = system.ActorOf(CoordinatorContact.Props(over, settings.ProbeTimeout, settings.ProbeRetry), "coordinator-contact");
        return new ShardPipeClient(system, contact, settings, ownsSystem: true);
    }

    /// <summary>The local address this machine's routing table uses toward <paramref name="host"/> (no packet is sent).</summary>
    private static string LocalAddressToward(string host)
    {
        try
        {
            var address = System.Net.Dns.GetHostAddresses(host).First();
            if (System.Net.IPAddress.IsLoopback(address)) return address.ToString();
            using var probe = new System.Net.Sockets.Socket(address.AddressFamily, System.Net.Sockets.SocketType.Dgram, System.Net.Sockets.ProtocolType.Udp);
            probe.Connect(address, 9);
            return ((System.Net.IPEndPoint)probe.LocalEndPoint!).Address.ToString();
        }
        catch (Exception ex) when (ex is System.Net.Sockets.SocketException or InvalidOperationException)
        {
            throw new ClusterException($"cannot tell which local address reaches {host} ({ex.Message}); set shardpipe.client.hostname");
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_ownsSystem) await _system.Terminate();
    }

    /// <summary>Loads a model; <paramref name="progress"/>, if given, sees every device's progress reports as they come.</summary>
    public async Task<ModelLoaded> LoadAsync(LoadModel request, TimeSpan timeout, Action<SliceProgress>? progress = null)
    {
        IActorRef? listener = null;
        if (progress is not null)
        {
            listener = _system.ActorOf(Props.Create(() => new LoadProgressActor(progress)));
            request = request with { ProgressTo = Akka.Serialization.Serialization.SerializedActorPath(listener) };
        }
        IShardPipeMessage reply;
        try { reply = await _coordinator.Ask<IShardPipeMessage>(request, timeout); }
        finally { listener?.Tell(PoisonPill.Instance); }
        return reply switch
        {
            ModelLoaded ok => ok,
            LoadFailed f => throw new ClusterException($"load failed: {f.Reason}"),
            _ => throw new ClusterException($"unexpected answer {reply.GetType().Name} to LoadModel"),
        };
    }

    public Task<ClusterStatus> StatusAsync(TimeSpan timeout) => _coordinator.Ask<ClusterStatus>(new GetStatus(Guid.NewGuid().ToString("N")), timeout);

    public Task<ModelUnloaded> UnloadAsync(TimeSpan timeout) => _coordinator.Ask<ModelUnloaded>(new UnloadModel(Guid.NewGuid().ToString("N")), timeout);

    /// <summary>
    /// Drains <paramref name="node"/>: its layers move to the others under a new epoch (requests in flight resume there
    /// with the same tokens), then it is told to leave. Answers once the new epoch serves; a refusal (nothing changed) is
    /// a typed error: <see cref="PlacementException"/> when the others lack the memory, <see cref="InvalidInputException"/>
    /// for an unknown node, else <see cref="ClusterException"/>.
    /// </summary>
    public Task<LayersMoved> DrainAsync(string node, TimeSpan timeout) => MoveAsync(new DrainNode(Guid.NewGuid().ToString("N"), node), timeout);

    /// <summary>Re-plans the served model over every node and moves what must move, live (as <see cref="DrainAsync"/>).</summary>
    public Task<LayersMoved> RebalanceAsync(TimeSpan timeout) => MoveAsync(new RebalanceModel(Guid.NewGuid().ToString("N")), timeout);

    private async Task<LayersMoved> MoveAsync(IShardPipeMessage request, TimeSpan timeout)
    {
        var reply = await _coordinator.Ask<IShardPipeMessage>(request, timeout);
        return reply switch
        {
            LayersMoved ok => ok,
            MoveFailed { Fault: MoveFault.Placement } f => throw new PlacementException(f.Reason),
            MoveFailed { Fault: MoveFault.InvalidInput } f => throw new InvalidInputException(f.Reason),
            MoveFailed f => throw new ClusterException(f.Reason),
            _ => throw new ClusterException($"unexpected answer {reply.GetType().Name} to {request.GetType().Name}"),
        };
    }

    /// <summary>
    /// Waits until <paramref name="nodes"/> nodes' workers have registered with the coordinator; a device the
    /// coordinator refused (say cuda:0 on a build without CUDA) ends the wait at once with its reason.
    /// </summary>
    public async Task<ClusterStatus> WaitForNodesAsync(int nodes, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            try
            {
                var s = await StatusAsync(TimeSpan.FromSeconds(2));
                if (s.Refused is { Length: > 0 } refused)
                    throw new ClusterException(string.Join("; ", refused.Select(r => $"{r.Device.Split('/')[0]}: {r.Reason}")));
                if (s.Nodes.Length >= nodes) return s;
            }
            catch (AskTimeoutException) { }
            if (DateTime.UtcNow > deadline) throw new ClusterException($"only some of the {nodes} nodes joined within {timeout.TotalSeconds:0} s");
            await Task.Delay(100);
        }
    }

    /// <summary>
    /// Runs a request through the pipeline. <paramref name="onTokens"/> sees each step's tokens as they arrive. The
    /// request fails if a stage's worker dies or if nothing arrives for <paramref name="stallTimeout"/>.
    /// </summary>
    /// <param name="cancel">Cancels the request: its actor stops, so the coordinator (which watches callers) cancels it
    /// on every stage; the task ends as cancelled.</param>
    public Task<RequestOutcome> RunAsync(IClientRequest request, IReadOnlyList<StageInfo> stages, TimeSpan stallTimeout, Action<long[]>? onTokens = null,
        CancellationToken cancel = default)
    {
        var done = new TaskCompletionSource<RequestOutcome>(TaskCreationOptions.RunContinuationsAsynchronously);
        var actor = _system.ActorOf(Props.Create(typeof(RequestActor), _coordinator, request, stages, stallTimeout, onTokens, done, Settings)); // no expression to compile per request
        if (cancel.CanBeCanceled)
        {
            var registration = cancel.Register(() =>
            {
                if (done.TrySetCanceled(cancel)) _system.Stop(actor);
            });
            done.Task.ContinueWith(_ => registration.Dispose(), TaskScheduler.Default);
        }
        return done.Task;
    }
}
