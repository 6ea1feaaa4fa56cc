using ShardPipe.Placement;

namespace ShardPipe.Tests.Placement;

/// <summary>The one device_map grammar and the one module-path rule.</summary>
public class DeviceMapSpecTests
{
    [Theory]
    [InlineData("auto")]
    [InlineData(" balanced ")]
    [InlineData("balanced_low_0")]
    [InlineData("sequential")]
    public void Strategies_parse_as_strategies(string text)
    {
        var spec = DeviceMapSpec.Parse(text);
        Assert.Equal(text.Trim(), spec.Strategy);
        Assert.Empty(spec.Entries);
    }

    [Fact]
    public void A_device_or_a_map_parses_to_typed_devices_in_the_order_given()
    {
        var one = DeviceMapSpec.Parse("0");
        Assert.True(one.IsSingleDevice);
        Assert.Equal(DeviceId.Cuda(0), one.DeviceFor("model.layers.3.mlp"));
        var map = DeviceMapSpec.Parse("{\"model.embed_tokens\": 0, \"model.layers\": \"cpu\", \"model.layers.1\": \"node-2/cuda:1\", \"lm_head\": \"disk\"}");
        Assert.True(map.IsExplicit);
        Assert.Equal(new[] { "model.embed_tokens", "model.layers", "model.layers.1", "lm_head" }, map.Entries.Select(e => e.Key));
        Assert.Equal(DeviceId.Cpu, map.DeviceFor("model.layers.10.mlp.up_proj.weight")); // layers.1 is not an ancestor of layers.10
        Assert.Equal(DeviceId.Cuda(1, "node-2"), map.DeviceFor("model.layers.1.mlp.up_proj.weight"));
        Assert.Equal(DeviceId.Disk, map.DeviceFor("lm_head.weight"));
        Assert.Null(map.DeviceFor("model.norm.weight"));
    }

    [Theory]
    [InlineData("tpu", "'tpu' is not a device")]
    [InlineData("{\"a\": ", "not valid JSON")]
    [InlineData("{\"a\": true}", "device_map['a'] must be a device")]
    [InlineData("{\"a\": -1}", "device_map['a'] must be a device")]
    [InlineData("{\"a\": \"cpu\", \"a\": 0}", "lists 'a' twice")]
    public void Bad_maps_are_placement_errors_naming_the_entry(string text, string expect) =>
        Assert.Contains(expect, Assert.Throws<PlacementException>(() => DeviceMapSpec.Parse(text)).Message);

    [Theory]
    [InlineData("", "model.x", true)]
    [InlineData("model.layers.1", "model.layers.1", true)]
    [InlineData("model.layers.1", "model.layers.1.mlp", true)]
    [InlineData("model.layers.1", "model.layers.10", false)]
    [InlineData("model.layers.1", "model.layers", false)]
    public void A_prefix_covers_itself_and_its_descendants_only(string prefix, string key, bool covers) =>
        Assert.Equal(covers, ModulePath.Covers(prefix, key));

    [Fact]
    public void A_tensor_belongs_to_the_module_before_its_last_dot() =>
        Assert.Equal(("model.layers.0.mlp.up_proj", ""), (ModulePath.Parent("model.layers.0.mlp.up_proj.weight"), ModulePath.Parent("bias")));
}
