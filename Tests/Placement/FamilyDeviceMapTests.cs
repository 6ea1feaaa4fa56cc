using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Placement;

/// <summary>
/// Every Accelerate device map over Mixtral, Gemma and Phi (shared/hf-reference/families/device-maps): module sizes,
/// each family's <c>_no_split_modules</c>, and the map itself, from the planner and from <c>shardpipe plan</c>.
/// </summary>
public class FamilyDeviceMapTests
{
    public static TheoryData<string> Cases()
    {
        var d = new TheoryData<string>();
        foreach (var f in Directory.GetFiles(TestPaths.FamilyDeviceMaps, "*.json").Order(StringComparer.Ordinal)) d.Add(Path.GetFileNameWithoutExtension(f));
        return d;
    }

    private static (JsonNode Json, string ConfigFolder) Load(string name)
    {
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.FamilyDeviceMaps, name + ".json")))!;
        return (json, Path.Combine(TestPaths.Families, json["model_dir"]!.GetValue<string>()));
    }

    private static Dictionary<string, string> MapOf(JsonObject o) => o.ToDictionary(kv => kv.Key, kv => kv.Value!.ToJsonString());

    [Theory]
    [MemberData(nameof(Cases))]
    public void Module_sizes_and_no_split_classes_equal_accelerates(string name)
    {
        var (json, folder) = Load(name);
        var model = AutoModel.FromConfig(PretrainedConfig.FromFolder(folder));
        Assert.Equal(((JsonArray)json["no_split_module_classes"]!).Select(x => x!.GetValue<string>()), model.NoSplitModules);
        Assert.Equal(json["model_class"]!.GetValue<string>(), model.ClassName);
        var sizes = ModuleSizes.Compute(model.ToPlacementTree(), TorchRuntime.ParseFloatDType(json["dtype"]!.GetValue<string>()));
        var expected = (JsonObject)json["module_sizes"]!;
        Assert.Equal(expected.Select(kv => kv.Key).Order(StringComparer.Ordinal), sizes.Names.Where(n => sizes[n] > 0 || expected.ContainsKey(n)).Order(StringComparer.Ordinal));
        foreach (var (module, value) in expected)
            Assert.True(Math.Abs(value!.GetValue<double>() - sizes[module]) < 1e-9, $"{name}: module_sizes['{module}'] = {value}, ours {sizes[module]}");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Planner_reproduces_accelerates_device_map(string name)
    {
        var (json, folder) = Load(name);
        var model = AutoModel.FromConfig(PretrainedConfig.FromFolder(folder));
        var tree = model.ToPlacementTree();
        var dtype = TorchRuntime.ParseFloatDType(json["dtype"]!.GetValue<string>());
        var maxMemory = MaxMemory.Parse(AccelerateFixtureTests.MaxMemoryArg(json));
        string strategy = json["strategy"]!.GetValue<string>();
        if (json["balanced_max_memory"] is JsonArray expectedBalanced)
        {
            var ours = AccelerateDeviceMap.BalancedMemory(tree, maxMemory, model.NoSplitModules, dtype, lowZero: strategy == "balanced_low_0");
            Assert.Equal(expectedBalanced.Select(e => e![1]!.GetValue<double>()), ours.Select(o => o.Bytes));
        }
        // The family's own _no_split_modules, as from_pretrained(device_map=...) passes them.
        var plan = DevicePlanner.Plan(new PlanRequest { Model = tree, DeviceMap = DeviceMapSpec.Parse(strategy), MaxMemory = maxMemory, NoSplitModuleClasses = model.NoSplitModules, DType = dtype });
        var actual = plan.DeviceMap.ToDictionary(kv => kv.Key, kv => kv.Value.ToHfValue() is int i ? i.ToString() : $"\"{kv.Value}\"");
        Assert.Equal(MapOf((JsonObject)json["device_map"]!).OrderBy(kv => kv.Key), actual.OrderBy(kv => kv.Key));
        Assert.Equal(((JsonArray)json["tied_parameters"]!).Select(g => string.Join("|", ((JsonArray)g!).Select(x => x!.GetValue<string>()))),
            tree.TiedParameters().Select(g => string.Join("|", g)));
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Plan_cli_prints_the_same_map_with_the_familys_no_split_classes(string name)
    {
        var (json, folder) = Load(name);
        // No --no-split-module-classes: plan takes the family's own.
        var r = ShardPipeProcess.Run("plan", "--model", folder, "--device-map", json["strategy"]!.GetValue<string>(),
            "--max-memory", AccelerateFixtureTests.MaxMemoryArg(json), "--dtype", json["dtype"]!.GetValue<string>(), "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var outJson = JsonNode.Parse(r.Stdout)!;
        Assert.Equal(MapOf((JsonObject)json["device_map"]!).OrderBy(kv => kv.Key), MapOf((JsonObject)outJson["device_map"]!).OrderBy(kv => kv.Key));
        Assert.Equal(((JsonArray)json["devices_used"]!).Select(d => d!.GetValue<string>()).Order(),
            ((JsonArray)outJson["devices"]!).Select(d => d!["device"]!.ToJsonString().Trim('"')).Order());
    }
}
