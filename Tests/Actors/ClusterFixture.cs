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

/// <summary>A loaded reference model checked on a cluster: every forward case's last logits and every greedy generation.</summary>
internal static class ReferenceOnCluster
{
    public static async Task Check(ShardPipe.Actors.Client.ShardPipeClient client, ModelLoaded loaded, ShardPipe.Tests.Support.ReferenceData r, string what)
    {
        foreach (var c in r.ForwardCases)
        {
            var ids = ShardPipe.Tests.Support.ReferenceData.Ints(c["input_ids"]);
            var mask = c["attention_mask"] is System.Text.Json.Nodes.JsonArray ? ShardPipe.Tests.Support.ReferenceData.Ints(c["attention_mask"]) : null;
            var pos = c["position_ids"] is System.Text.Json.Nodes.JsonArray ? ShardPipe.Tests.Support.ReferenceData.Ints(c["position_ids"]) : null;
            var outcome = await client.RunAsync(Requests.Forward(ids, mask, pos), loaded.Stages, TimeSpan.FromSeconds(30));
            var expected = ShardPipe.Tests.Support.ReferenceData.Doubles(c["last_logits"]!);
            for (int b = 0; b < ids.Length; b++)
                ShardPipe.Tests.Modeling.ReferenceModelTests.AssertClose(expected[b], outcome.LastLogits![b], 1e-4, $"{r.Name}/{c["name"]} row {b} {what}");
        }
        foreach (var c in r.GenerateCases)
        {
            var ids = ShardPipe.Tests.Support.ReferenceData.Ints(c["input_ids"]);
            var mask = c["attention_mask"] is System.Text.Json.Nodes.JsonArray ? ShardPipe.Tests.Support.ReferenceData.Ints(c["attention_mask"]) : null;
            int n = c["generation_kwargs"]!["max_new_tokens"]!.GetValue<int>();
            var outcome = await client.RunAsync(Requests.Generate(ids, mask, n), loaded.Stages, TimeSpan.FromSeconds(30));
            Assert.Equal(ShardPipe.Tests.Support.ReferenceData.Ints(c["sequences"]), ids.Select((row, b) => row.Concat(outcome.NewTokens[b]).ToArray()).ToArray());
        }
    }
}

internal static class Requests
{
    public static LoadModel Load(string folder, string? variant = null, string deviceMap = "balanced", string? dtype = "float32", string? maxMemory = null,
        QuantizeRequest? quantize = null) =>
        new(Guid.NewGuid().ToString("N"), folder, variant, dtype, deviceMap, maxMemory, null, Quantize: quantize);

    public static Generate Generate(long[][] ids, long[][]? mask, int maxNew) =>
        new(Guid.NewGuid().ToString("N"), ids, mask, maxNew, false, new SamplingSettings(true, 0, 0, 1, 0));

    public static Forward Forward(long[][] ids, long[][]? mask = null, long[][]? positions = null) => new(Guid.NewGuid().ToString("N"), ids, mask, positions);
}
