using FsCheck;
using FsCheck.Xunit;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Placement;

/// <summary>Speed-aware cluster placement: equal speeds change nothing, a slower node holds fewer blocks, budgets and contiguity hold.</summary>
public class SpeedPlacementTests
{
    private const int Layers = 24;
    private static readonly CausalLMModel Model = Deep(Layers);

    private static CausalLMModel Deep(int layers)
    {
        var cfg = PretrainedConfig.FromFolder(TestPaths.Model("llama_untied")).Clone();
        cfg.Set("num_hidden_layers", layers);
        return AutoModel.FromConfig(cfg);
    }

    private static PlanResult Plan(List<(DeviceId, double)> devices, IReadOnlyDictionary<DeviceId, double>? speeds) => ClusterPlanner.Plan(new ClusterPlanRequest
    {
        Model = Model.ToPlacementTree(), NoSplitModuleClasses = Model.NoSplitModules, DType = DType.F32, Devices = devices,
        Layers = Enumerable.Range(0, Layers).Select(Model.LayerPath).ToList(), Speeds = speeds,
    });

    private static Dictionary<string, int> LayersPerNode(PlanResult plan) => Enumerable.Range(0, Layers)
        .GroupBy(i => ModulePath.Closest(plan.DeviceMap, Model.LayerPath(i))!.Node!).ToDictionary(g => g.Key, g => g.Count());

    private static double Total => ModuleSizes.Compute(Model.ToPlacementTree(), DType.F32, memoryBytes: true)[""];

    [Property(MaxTest = 100)]
    public void Equal_speeds_give_the_byte_balanced_plan(PositiveInt a, PositiveInt b, PositiveInt c, PositiveInt speed)
    {
        var devices = new List<(DeviceId, double)>
        {
            (DeviceId.Parse("n1/cpu"), Math.Floor(Total * (0.4 + (a.Get % 100) / 100.0))),
            (DeviceId.Parse("n2/cpu"), Math.Floor(Total * (0.4 + (b.Get % 100) / 100.0))),
            (DeviceId.Parse("n3/cpu"), Math.Floor(Total * (0.4 + (c.Get % 100) / 100.0))),
        };
        double s = 0.1 + speed.Get % 50;
        var equal = devices.ToDictionary(d => d.Item1, _ => s);
        Assert.Equal(Plan(devices, null).DeviceMap, Plan(devices, equal).DeviceMap);
        // An older peer reports no speed: the others' being equal, it counts as equal too.
        equal.Remove(DeviceId.Parse("n2/cpu"));
        Assert.Equal(Plan(devices, null).DeviceMap, Plan(devices, equal).DeviceMap);
    }

    [Fact]
    public void Speeds_two_to_one_give_about_two_to_one_layers()
    {
        var devices = MaxMemory.Parse($"n1/cpu={(long)Total},n2/cpu={(long)Total}");
        var perNode = LayersPerNode(Plan(devices, new Dictionary<DeviceId, double> { [DeviceId.Parse("n1/cpu")] = 2.0, [DeviceId.Parse("n2/cpu")] = 1.0 }));
        Assert.InRange(perNode["n1"], 15, 17); // 2/3 of 24 = 16
        Assert.Equal(Layers - perNode["n1"], perNode["n2"]);
        var bytes = LayersPerNode(Plan(devices, null));
        Assert.Equal(12, bytes["n1"]); // the byte-balanced plan splits evenly
    }

    [Fact]
    public void Speeds_within_the_minimum_ratio_count_as_equal_so_measurement_noise_does_not_move_layers()
    {
        var devices = MaxMemory.Parse($"n1/cpu={(long)Total},n2/cpu={(long)Total},n3/cpu={(long)Total}");
        var noisy = new Dictionary<DeviceId, double> { [DeviceId.Parse("n1/cpu")] = 1.0, [DeviceId.Parse("n2/cpu")] = 1.3, [DeviceId.Parse("n3/cpu")] = 0.9 };
        Assert.Equal(Plan(devices, null).DeviceMap, Plan(devices, noisy).DeviceMap);
        // Past the ratio a node counts as slower, in half-power-of-two steps: 0.45 and 0.55 of the fastest plan alike.
        Assert.Equal(1.0, DeviceSpeeds.Relative(0.7, 1.0));
        Assert.Equal(Math.Sqrt(0.5), DeviceSpeeds.Relative(0.66, 1.0), 12);
        Assert.Equal(DeviceSpeeds.Relative(0.45, 1.0), DeviceSpeeds.Relative(0.55, 1.0));
        Assert.Equal(0.5, DeviceSpeeds.Relative(0.5, 1.0), 12);
    }

    [Fact]
    public void A_node_at_a_third_of_the_speed_holds_about_a_seventh_of_the_layers_of_three()
    {
        var devices = MaxMemory.Parse($"node-1/cpu={(long)Total},node-2/cpu={(long)Total},node-3/cpu={(long)Total}");
        var perNode = LayersPerNode(Plan(devices, new Dictionary<DeviceId, double>
            { [DeviceId.Parse("node-1/cpu")] = 3e9, [DeviceId.Parse("node-2/cpu")] = 3e9, [DeviceId.Parse("node-3/cpu")] = 1e9 }));
        Assert.InRange(perNode["node-3"], 2, 4); // 1/7 of 24 ≈ 3.4 (the fill in order rounds the last node's share down)
        Assert.InRange(perNode["node-1"], 9, 11);
        Assert.InRange(perNode["node-2"], 9, 11);
    }

    [Property(MaxTest = 200)]
    public void Speed_aware_plans_respect_budgets_keep_nodes_contiguous_and_favour_the_faster(PositiveInt a, PositiveInt b, PositiveInt c, PositiveInt sa, PositiveInt sb, PositiveInt sc)
    {
        var names = new[] { "n1/cpu", "n2/cpu", "n3/cpu" }.Select(DeviceId.Parse).ToArray();
        var devices = new List<(DeviceId, double)>
        {
            (names[0], Math.Floor(Total * (0.2 + (a.Get % 100) / 100.0))),
            (names[1], Math.Floor(Total * (0.2 + (b.Get % 100) / 100.0))),
            (names[2], Math.Floor(Total * (0.2 + (c.Get % 100) / 100.0))),
        };
        var speeds = new Dictionary<DeviceId, double> { [names[0]] = 1 + sa.Get % 8, [names[1]] = 1 + sb.Get % 8, [names[2]] = 1 + sc.Get % 8 };
        PlanResult plan;
        try { plan = Plan(devices, speeds); }
        catch (PlacementException)
        {
            // Refused only when the byte-balanced plan (or any fill) is refused too: speeds never lose capacity.
            Assert.Throws<PlacementException>(() => Plan(devices, null));
            return;
        }
        foreach (var (device, bytes, budget) in plan.Devices)
            Assert.True(bytes <= budget!.Value + 1e-6, $"{device}: {bytes} > {budget}");
        var layerNodes = Enumerable.Range(0, Layers).Select(i => ModulePath.Closest(plan.DeviceMap, Model.LayerPath(i))!.Node).ToList();
        var runs = layerNodes.Where((n, i) => i == 0 || n != layerNodes[i - 1]).ToList();
        Assert.Equal(runs.Distinct().Count(), runs.Count);
        Assert.Equal(plan.DeviceMap, Plan(devices, speeds).DeviceMap); // deterministic
        // With equal budgets and no budget binding, the faster node never holds fewer blocks than a slower one (± one at the edges).
        if (a.Get % 100 == b.Get % 100 && b.Get % 100 == c.Get % 100 && a.Get % 100 >= 80)
        {
            var perNode = LayersPerNode(plan);
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++)
                    if (speeds[names[i]] > speeds[names[j]])
                        Assert.True(perNode.GetValueOrDefault(names[i].Node!) + 1 >= perNode.GetValueOrDefault(names[j].Node!), $"{names[i]} is faster but holds fewer blocks");
        }
    }

    [Fact]
    public void A_slow_node_is_still_filled_to_its_budget_when_the_model_needs_it()
    {
        // Two nodes whose budgets together barely hold the model: speed cannot push past the fast node's budget.
        long half = (long)(Total * 0.56);
        var devices = MaxMemory.Parse($"n1/cpu={half},n2/cpu={half}");
        var plan = Plan(devices, new Dictionary<DeviceId, double> { [DeviceId.Parse("n1/cpu")] = 10, [DeviceId.Parse("n2/cpu")] = 1 });
        foreach (var (device, bytes, budget) in plan.Devices) Assert.True(bytes <= budget!.Value, $"{device} over budget");
        Assert.True(LayersPerNode(plan)["n2"] >= 9, "the slow node takes what the fast one cannot hold");
    }

    [Fact]
    public void Plan_nodes_grammar_reads_speeds_and_keeps_the_old_form()
    {
        var (devices, speeds) = DeviceSpeeds.Parse("node-1/cpu=16GB@2.0, node-2/cpu=16GB, node-3/cuda:0=8GiB@0.5");
        Assert.Equal(new[] { "node-1/cpu", "node-2/cpu", "node-3/cuda:0" }, devices.Select(d => d.Device.ToString()));
        Assert.Equal(16_000_000_000d, devices[0].Bytes);
        Assert.Equal(2.0, speeds[DeviceId.Parse("node-1/cpu")]);
        Assert.False(speeds.ContainsKey(DeviceId.Parse("node-2/cpu")));
        Assert.Equal(0.5, speeds[DeviceId.Parse("node-3/cuda:0")]);
        Assert.Equal(MaxMemory.Parse("w1/cuda:0=8GiB,w2/cpu=16GiB"), DeviceSpeeds.Parse("w1/cuda:0=8GiB,w2/cpu=16GiB").Devices);
        Assert.Contains("node-1/cpu", Assert.Throws<InvalidInputException>(() => DeviceSpeeds.Parse("node-1/cpu=16GB@fast")).Message);
        Assert.Throws<InvalidInputException>(() => DeviceSpeeds.Parse("node-1/cpu=16GB@0"));
        Assert.Throws<InvalidInputException>(() => DeviceSpeeds.Parse("node-1/cpu=16GB@-1"));
        Assert.Throws<InvalidInputException>(() => DeviceSpeeds.Parse("node-1/cpu=16GB@NaN"));
        Assert.Throws<InvalidInputException>(() => DeviceSpeeds.Parse("node-1/cpu@2=16GB"));
    }

    [Fact]
    public void A_bad_speed_in_a_plan_request_is_a_typed_error()
    {
        var devices = MaxMemory.Parse($"n1/cpu={(long)Total},n2/cpu={(long)Total}");
        var ex = Assert.Throws<PlacementException>(() => Plan(devices, new Dictionary<DeviceId, double> { [DeviceId.Parse("n1/cpu")] = double.NaN }));
        Assert.Contains("n1/cpu", ex.Message);
    }
}
