using ShardPipe.Messages;
using ShardPipe.Modeling.Models;
using ShardPipe.Placement;

namespace ShardPipe.Actors.Coordination;

/// <summary>
/// From a cluster device map to the pipeline: the model's ops in order (embed, each block, final norm, head),
/// each on its worker, consecutive ops of one worker merged into one hop. A tied head placed with the embedding
/// makes the last hop return to the first node.
/// </summary>
public static class PipelineRoute
{
    public static PipelineHop[] Build(CausalLMModel model, List<KeyValuePair<string, DeviceId>> map, Func<DeviceId, string> workerPath)
    {
        DeviceId On(string module) => ModulePath.Closest(map, module)
            ?? throw new PlacementException($"the device map places no device for '{module}'");
        var ops = new List<(DeviceId Device, string Op, int Layer)> { (On(model.InputEmbeddingsPath), "embed", -1) };
        for (int i = 0; i < model.NumLayers; i++) ops.Add((On(model.LayerPath(i)), "layer", i));
        ops.Add((On(model.FinalNormPath), "norm", -1));
        ops.Add((On(model.OutputEmbeddingsPath), "head", -1));
        var hops = new List<PipelineHop>();
        foreach (var group in Consecutive(ops))
        {
            var layers = group.Where(o => o.Op == "layer").Select(o => o.Layer).ToList();
            hops.Add(new PipelineHop(workerPath(group[0].Device), group.Any(o => o.Op == "embed"),
                layers.Count > 0 ? layers[0] : 0, layers.Count, group.Any(o => o.Op == "norm"), group.Any(o => o.Op == "head")));
        }
        return hops.ToArray();
    }

    private static IEnumerable<List<(DeviceId Device, string Op, int Layer)>> Consecutive(List<(DeviceId Device, string Op, int Layer)> ops)
    {
        var current = new List<(DeviceId, string, int)>();
        foreach (var op in ops)
        {
            if (current.Count > 0 && current[^1].Item1 != op.Device)
            {
                yield return current;
                current = new List<(DeviceId, string, int)>();
            }
            current.Add(op);
        }
        if (current.Count > 0) yield return current;
    }
}
