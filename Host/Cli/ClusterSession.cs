using System.Diagnostics;
using System.Text.Json.Nodes;
using Akka.Actor;
using Akka.Configuration;
using Microsoft.Extensions.Logging;
using ShardPipe.Actors.Client;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;

namespace ShardPipe.Host.Cli;

/// <summary>
/// A CLI command's connection to a cluster: <c>embedded:N</c> starts N nodes in this process; <c>HOST:PORT[,HOST:PORT…]</c>
/// reaches a running cluster through those contact points (tried in order) as a client, never as a member.
/// </summary>
public sealed class ClusterSession : IAsyncDisposable
{
    public ShardPipeClient Client { get; }
    public int ExpectedNodes { get; }
    private readonly Func<ValueTask> _dispose;

    private ClusterSession(ShardPipeClient client, int expectedNodes, Func<ValueTask> dispose)
    {
        Client = client;
        ExpectedNodes = expectedNodes;
        _dispose = dispose;
    }

    /// <param name="offloadFolder">For embedded nodes with a disk device: where they write weights they convert.</param>
    /// <param name="clientConfig">A HOCON file with the client's settings (<c>--client-config</c>): its TLS certificate for a cluster under TLS.</param>
    /// <param name="embeddedConfig">HOCON every embedded node starts with (ignored for a cluster of nodes, whose own configs rule).</param>
    public static async Task<ClusterSession> ConnectAsync(string spec, string? nodes, ILogger log, string? offloadFolder = null, string? clientConfig = null,
        string? embeddedConfig = null)
    {
        if (spec.StartsWith("embedded:", StringComparison.Ordinal) || spec == "embedded")
        {
            int n = spec == "embedded" ? 1 : int.TryParse(spec[9..], out int k) && k >= 1 ? k
                : throw new InvalidInputException($"--cluster '{spec}': use embedded:N with N ≥ 1, or HOST:PORT");
            if (nodes is not null) n = EmbeddedCluster.Layout(n, nodes).Count;
            var sw = Stopwatch.StartNew();
            var cluster = await EmbeddedCluster.StartAsync(n, nodes, extraConfig: embeddedConfig is null ? null : _ => embeddedConfig, offloadFolder: offloadFolder);
            log.LogInformation("embedded cluster of {Nodes} nodes up in {Seconds:0.00} s", n, sw.Elapsed.TotalSeconds);
            return new ClusterSession(cluster.Client, n, cluster.DisposeAsync);
        }
        var contacts = ContactPoints.Parse(spec);
        var client = ShardPipeClient.Connect(contacts, ReadClientConfig(clientConfig));
        var session = new ClusterSession(client, 0, client.DisposeAsync);
        try { await client.StatusAsync(TimeSpan.FromSeconds(30)); } // reach the coordinator or fail clearly
        catch (AskTimeoutException)
        {
            await client.DisposeAsync();
            throw new ClusterException($"no coordinator answered through {spec} within 30 s (are the nodes up?)");
        }
        return session;
    }

    /// <summary>A session over an embedded cluster started elsewhere (tests, benchmarks); disposing it stops the cluster.</summary>
    public static ClusterSession Over(EmbeddedCluster cluster) => new(cluster.Client, cluster.Nodes.Count, cluster.DisposeAsync);

    private static Config? ReadClientConfig(string? path)
    {
        if (path is null) return null;
        if (!File.Exists(path)) throw new InvalidInputException($"--client-config {path}: file not found");
        try { return ConfigurationFactory.ParseString(File.ReadAllText(path)); }
        catch (Exception ex) when (ex is not OutOfMemoryException) { throw new InvalidInputException($"--client-config {path}: not valid HOCON ({ex.Message})"); }
    }

    /// <summary>Loads the model unless the cluster already serves it; returns the stages and the map.</summary>
    public async Task<(StageInfo[] Stages, JsonObject DeviceMap, double LoadSeconds)> EnsureLoadedAsync(LoadModel load, ILogger log, bool json)
    {
        var status = await Client.StatusAsync(TimeSpan.FromSeconds(30));
        if (status.State == ClusterState.Ready && status.Model is { } m && Path.GetFullPath(m) == Path.GetFullPath(ShardPipe.Checkpoints.ModelLocator.Locate(load.Model)))
            return (status.Stages, MapJson(status.DeviceMap), 0);
        var sw = Stopwatch.StartNew();
        var loaded = await LoadWithProgressAsync(load, json);
        foreach (var d in loaded.Devices)
            log.LogInformation("{Device}: {Loaded} loaded of {Planned} planned (budget {Budget})", d.Device,
                ShardPipe.Checkpoints.ByteSize.Format(d.LoadedBytes), ShardPipe.Checkpoints.ByteSize.Format(d.PlannedBytes), ShardPipe.Checkpoints.ByteSize.Format(d.BudgetBytes));
        return (loaded.Stages, MapJson(loaded.DeviceMap), sw.Elapsed.TotalSeconds);
    }

    /// <summary>Loads, showing each device's progress on stderr (<see cref="LoadProgress"/>).</summary>
    public Task<ModelLoaded> LoadWithProgressAsync(LoadModel load, bool json) =>
        new LoadProgress(json).RunAsync(report => Client.LoadAsync(load, TimeSpan.FromMinutes(30), report));

    public static JsonObject MapJson(IEnumerable<DeviceMapEntry> map)
    {
        var o = new JsonObject();
        foreach (var e in map) o[e.Module] = e.Device;
        return o;
    }

    public ValueTask DisposeAsync() => _dispose();
}
