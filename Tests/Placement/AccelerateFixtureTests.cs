using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Placement;

/// <summary>Every Accelerate device map in shared/hf-reference/device-maps, reproduced by the planner and by <c>shardpipe plan</c>.</summary>
public class AccelerateFixtureTests
{
    public static TheoryData<string> Cases()
    {
        var d = new TheoryData<string>();
        foreach (var f in Directory.GetFiles(TestPaths.DeviceMaps, "*.json").Order(StringComparer.Ordinal)) d.Add(Path.GetFileNameWithoutExtension(f));
        return d;
    }

    internal sealed record Fixture(JsonNode Json, string ConfigFolder, TempDir? Temp) : IDisposable
    {
        public void Dispose() => Temp?.Dispose();
    }

    internal static Fixture Load(string name)
    {
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.DeviceMaps, name + ".json")))!;
        if (json["model_dir"] is JsonValue dir) return new Fixture(json, Path.Combine(TestPaths.HfReference, dir.GetValue<string>()), null);
        var tmp = new TempDir();
        File.WriteAllText(tmp.File("config.json"), json["config"]!.ToJsonString());
        return new Fixture(json, tmp.Path, tmp);
    }

    internal static string MaxMemoryArg(JsonNode json) => string.Join(",", ((JsonArray)json["max_memory"]!).Select(e =>
        $"{e![0]!.ToJsonString().Trim('"')}={e[1]!.ToJsonString().Trim('"')}"));

    private static Dictionary<string, string> MapOf(JsonObject o) => o.ToDictionary(kv => kv.Key, kv => kv.Value!.ToJsonString());

    [Theory]
    [MemberData(nameof(Cases))]
    public void Module_sizes_equal_accelerates(string name)
    {
        using var f = Load(name);
        var model = AutoModel.FromConfig(PretrainedConfig.FromFolder(f.ConfigFolder));
        var sizes = ModuleSizes.Compute(model.ToPlacementTree(), TorchRuntime.ParseFloatDType(f.Json["dtype"]!.GetValue<string>()));
        foreach (var (module, value) in (JsonObject)f.Json["module_sizes"]!)
            Assert.True(Math.Abs(value!.GetValue<double>() - sizes[module]) < 1e-9, $"{name}: module_sizes['{module}'] = {value}, ours {sizes[module]}");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Planner_reproduces_accelerates_device_map(string name)
    {
        using var f = Load(name);
        var model = AutoModel.FromConfig(PretrainedConfig.FromFolder(f.ConfigFolder));
        var tree = model.ToPlacementTree();
        var noSplit = ((JsonArray)f.Json["no_split_module_classes"]!).Select(x => x!.GetValue<string>()).ToList();
        var dtype = TorchRuntime.ParseFloatDType(f.Json["dtype"]!.GetValue<string>());
        var maxMemory = MaxMemory.Parse(MaxMemoryArg(f.Json));
        string strategy = f.Json["strategy"]!.GetValue<string>();
        if (f.Json["balanced_max_memory"] is JsonArray expectedBalanced)
        {
            var ours = AccelerateDeviceMap.BalancedMemory(tree, maxMemory, noSplit, dtype, lowZero: strategy == "balanced_low_0");
            Assert.Equal(expectedBalanced.Select(e => e![1]!.GetValue<double>()), ours.Select(o => o.Bytes));
        }
        var plan = DevicePlanner.Plan(new PlanRequest { Model = tree, DeviceMap = DeviceMapSpec.Parse(strategy), MaxMemory = maxMemory, NoSplitModuleClasses = noSplit, DType = dtype });
        var expected = MapOf((JsonObject)f.Json["device_map"]!);
        var actual = plan.DeviceMap.ToDictionary(kv => kv.Key, kv => kv.Value.ToHfValue() is int i ? i.ToString() : $"\"{kv.Value}\"");
        Assert.Equal(expected.OrderBy(kv => kv.Key), actual.OrderBy(kv => kv.Key));
        Assert.Equal(((JsonArray)f.Json["tied_parameters"]!).Select(g => string.Join("|", ((JsonArray)g!).Select(x => x!.GetValue<string>()))),
            tree.TiedParameters().Select(g => string.Join("|", g)));
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Plan_cli_prints_the_same_map(string name)
    {
        using var f = Load(name);
        var noSplit = string.Join(",", ((JsonArray)f.Json["no_split_module_classes"]!).Select(x => x!.GetValue<string>()));
        var r = ShardPipeProcess.Run("plan", "--model", f.ConfigFolder, "--device-map", f.Json["strategy"]!.GetValue<string>(),
            "--max-memory", MaxMemoryArg(f.Json), "--no-split-module-classes", noSplit, "--dtype", f.Json["dtype"]!.GetValue<string>(), "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = JsonNode.Parse(r.Stdout)!;
        Assert.Equal(MapOf((JsonObject)f.Json["device_map"]!).OrderBy(kv => kv.Key), MapOf((JsonObject)json["device_map"]!).OrderBy(kv => kv.Key));
        var devices = (JsonArray)json["devices"]!;
        Assert.Equal(((JsonArray)f.Json["devices_used"]!).Select(d => d!.GetValue<string>()).Order(),
            devices.Select(d => d!["device"]!.ToJsonString().Trim('"')).Order());
    }
}
