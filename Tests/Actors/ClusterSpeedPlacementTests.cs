using ShardPipe.Actors.Hosting;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// Speed-aware placement over a real cluster: every worker reports its calibrated speed, status shows it, and a node
/// whose steps run at a quarter of the speed (<c>shardpipe.debug.compute-slowdown = 4</c>) gets fewer layers — the
/// exact plan the planner makes from the speeds status reports (no timing is asserted).
/// </summary>
[Collection("cluster")]
public class ClusterSpeedPlacementTests
{
    [Fact]
    public async Task A_slower_node_reports_a_lower_speed_and_gets_fewer_layers()
    {
        string dir = Path.Combine(Path.GetTempPath(), "shardpipe-speed-" + Guid.NewGuid().ToString("N")[..8]);
        SyntheticLlama.Write(dir, new SyntheticLlamaSpec { NumLayers = 12, MaxShardSize = "200KB" });
        try
        {
            await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB",
                extraConfig: i => "shardpipe.placement.balance = speed" + (i == 2 ? "\nshardpipe.debug.compute-slowdown = 4" : ""));
            var speeds = new Dictionary<string, double>();
            await Eventually.True(async () =>
            {
                var s = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(10));
                speeds = (s.Timings ?? Array.Empty<ShardPipe.Messages.DeviceTiming>()).Where(t => t.Speed is not null).ToDictionary(t => t.Device, t => t.Speed!.Value);
                return speeds.Count == 3;
            }, TimeSpan.FromSeconds(60), "every worker reports its speed");
            Assert.True(speeds["node-3/cpu"] < speeds["node-1/cpu"] && speeds["node-3/cpu"] < speeds["node-2/cpu"],
                $"node-3 runs at a quarter of the speed but reported {string.Join(", ", speeds.Select(kv => $"{kv.Key} {kv.Value:0}"))}");

            var loaded = await cluster.Client.LoadAsync(Requests.Load(dir), TimeSpan.FromMinutes(2));
            int Layers(string node) => loaded.DeviceMap.Count(e => e.Module.StartsWith("model.layers.", StringComparison.Ordinal) && e.Device.StartsWith(node + "/", StringComparison.Ordinal));
            Assert.True(Layers("node-3") < Layers("node-1") && Layers("node-3") < Layers("node-2"),
                $"layers per node: {Layers("node-1")}, {Layers("node-2")}, {Layers("node-3")}");

            // The same plan as the pure planner makes from the reported speeds.
            var meta = AutoModel.FromConfig(PretrainedConfig.FromFolder(dir));
            var expected = ClusterPlanner.Plan(new ClusterPlanRequest
            {
                Model = meta.ToPlacementTree(), NoSplitModuleClasses = meta.NoSplitModules, DType = DType.F32,
                Devices = MaxMemory.Parse("node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB"),
                Layers = Enumerable.Range(0, meta.NumLayers).Select(meta.LayerPath).ToList(),
                Speeds = speeds.ToDictionary(kv => DeviceId.Parse(kv.Key), kv => kv.Value),
            });
            Assert.Equal(expected.DeviceMap.Select(kv => (kv.Key, kv.Value.ToString())), loaded.DeviceMap.Select(e => (e.Module, e.Device)));
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }
}
