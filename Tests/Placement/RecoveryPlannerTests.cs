using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Placement;

/// <summary>Re-planning after lost devices: what survives stays, only the lost modules move, budgets hold, and a shortfall names its bytes.</summary>
public class RecoveryPlannerTests
{
    private static readonly ModuleNode Tree = AutoModel.FromConfig(PretrainedConfig.FromFolder(TestPaths.Model("llama_untied"))).ToPlacementTree();
    private static DeviceId D(string s) => DeviceId.Parse(s);

    private static List<KeyValuePair<string, DeviceId>> ThreeWay() => new()
    {
        new("model.embed_tokens", D("node-1/cpu")), new("model.layers.0", D("node-1/cpu")),
        new("model.layers.1", D("node-2/cpu")), new("model.layers.2", D("node-3/cpu")),
        new("model.norm", D("node-3/cpu")), new("lm_head", D("node-3/cpu")),
    };

    private static Dictionary<DeviceId, double> Bytes(IEnumerable<KeyValuePair<string, DeviceId>> map) =>
        DevicePlanner.Usage(Tree, map.ToList(), Array.Empty<(DeviceId, double)>(), DType.F32, memoryBytes: true).ToDictionary(u => u.Device, u => u.Bytes);

    [Fact]
    public void Only_the_lost_devices_modules_move_and_they_follow_the_module_before_them()
    {
        var plan = RecoveryPlanner.Replan(Tree, DType.F32, ThreeWay(), new[] { (D("node-1/cpu"), 1e9), (D("node-3/cpu"), 1e9) });
        Assert.Equal(ThreeWay().Select(kv => kv.Key), plan.DeviceMap.Select(kv => kv.Key)); // pipeline order kept
        Assert.Equal(D("node-1/cpu"), plan.DeviceMap.Single(kv => kv.Key == "model.layers.1").Value); // beside layer 0: still contiguous
        var moved = Assert.Single(plan.Moved);
        Assert.Equal(("model.layers.1", D("node-2/cpu"), D("node-1/cpu")), moved);
        foreach (var kv in ThreeWay().Where(kv => kv.Value != D("node-2/cpu")))
            Assert.Equal(kv.Value, plan.DeviceMap.Single(x => x.Key == kv.Key).Value);
    }

    [Fact]
    public void A_full_neighbour_sends_the_module_to_the_next_one_with_room_and_budgets_hold()
    {
        var before = Bytes(ThreeWay());
        // node-1 has no room beyond what it holds; node-3 has exactly enough for layer 1 too.
        double layer = Bytes(ThreeWay().Where(kv => kv.Key == "model.layers.1"))[D("node-2/cpu")];
        var survivors = new[] { (D("node-1/cpu"), before[D("node-1/cpu")]), (D("node-3/cpu"), before[D("node-3/cpu")] + layer) };
        var plan = RecoveryPlanner.Replan(Tree, DType.F32, ThreeWay(), survivors);
        Assert.Equal(D("node-3/cpu"), plan.DeviceMap.Single(kv => kv.Key == "model.layers.1").Value);
        var after = Bytes(plan.DeviceMap);
        foreach (var (device, budget) in survivors) Assert.True(after[device] <= budget, $"{device}: {after[device]} > {budget}");
    }

    [Fact]
    public void Memory_is_preferred_to_disk_and_a_shortfall_names_the_missing_bytes_and_modules()
    {
        var withDisk = RecoveryPlanner.Replan(Tree, DType.F32, ThreeWay(),
            new[] { (D("node-1/disk"), 1e9), (D("node-1/cpu"), 1e9), (D("node-3/cpu"), 1e9) });
        Assert.Equal("cpu", withDisk.DeviceMap.Single(kv => kv.Key == "model.layers.1").Value.Kind);

        var ex = Assert.Throws<PlacementException>(() => RecoveryPlanner.Replan(Tree, DType.F32, ThreeWay(),
            new[] { (D("node-1/cpu"), Bytes(ThreeWay())[D("node-1/cpu")]), (D("node-3/cpu"), Bytes(ThreeWay())[D("node-3/cpu")]) }));
        Assert.Contains("missing", ex.Message);
        Assert.Contains("model.layers.1", ex.Message);
    }

    [Fact]
    public void A_survivor_that_lost_its_slice_takes_modules_from_an_empty_budget()
    {
        // node-3 restarted (it holds nothing): its modules move too, and it may take them back.
        var survivors = new[] { (D("node-1/cpu"), 1e9), (D("node-2/cpu"), 1e9), (D("node-3/cpu"), 1e9) };
        var plan = RecoveryPlanner.Replan(Tree, DType.F32, ThreeWay(), survivors, intact: new HashSet<DeviceId> { D("node-1/cpu"), D("node-2/cpu") });
        Assert.Equal(new[] { "model.layers.2", "model.norm", "lm_head" }, plan.Moved.Select(m => m.Module));
        Assert.All(plan.Moved, m => Assert.Equal(D("node-3/cpu"), m.From));
    }
}
