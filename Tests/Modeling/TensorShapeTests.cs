using ShardPipe.Modeling.Core;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>The hot paths' sizes (<see cref="TensorShape.Shape"/>, through dim() and size(i)) are TorchSharp's shape, for every rank and for views.</summary>
public class TensorShapeTests
{
    [Fact]
    public void Shape_equals_torchsharp_shape_for_every_rank_and_views()
    {
        var tensors = new[]
        {
            tensor(3.5f),                       // 0-d
            zeros(7),
            zeros(0, 5),                        // an empty dimension
            zeros(2, 3, 4, 5),
            zeros(4, 6).transpose(0, 1),        // a non-contiguous view
            zeros(1, 12, 1, 64).narrow(1, 2, 5),
        };
        foreach (var t in tensors) Assert.Equal(t.shape, t.Shape());
        Assert.Empty(tensor(1L).Shape());
        Assert.Equal(new long[] { 6, 4 }, zeros(4, 6).transpose(0, 1).Shape());
    }
}
