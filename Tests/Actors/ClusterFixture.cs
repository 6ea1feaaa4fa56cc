using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;

namespace ShardPipe.Tests.Actors;

/// <summary>A real 3-node cluster (three ActorSystems over TCP on loopback) shared by a test class.</summary>
public sealed class ThreeNodeCluster : IAsyncLifetime
{
    public EmbeddedCluster Cluster { get; private set; } = null!;

    public async Task InitializeAsync() => Cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");

    public async Task DisposeAsync() => await Cluster.DisposeAsync();
}

/// <summary>Cluster tests run one class at a time: each starts real nodes, and this machine has two cores.</summary>
[CollectionDefinition("cluster", DisableParallelization = true)]
public sealed class ClusterCollection { }

internal static class Requests
{
    public static LoadModel Load(string folder, string? variant = null, string deviceMap = "balanced", string? dtype = "float32", string? maxMemory = null) =>
        new(Guid.NewGuid().ToString("N"), folder, variant, dtype, deviceMap, maxMemory, null);

    public static Generate Generate(long[][] ids, long[][]? mask, int maxNew) =>
        new(Guid.NewGuid().ToString("N"), ids, mask, maxNew, false, new SamplingSettings(true, 0, 0, 1, 0));

    public static Forward Forward(long[][] ids, long[][]? mask = null, long[][]? positions = null) => new(Guid.NewGuid().ToString("N"), ids, mask, positions);
}
