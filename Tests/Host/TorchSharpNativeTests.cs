using TorchSharp;

namespace ShardPipe.Tests.Host;

public class TorchSharpNativeTests
{
    [Fact]
    public void TorchSharp_initialises_and_computes()
    {
        // Fails with a DllNotFoundException if the build did not make libLibTorchSharp.so loadable.
        using var a = torch.arange(6, dtype: torch.float32).reshape(2, 3);
        using var b = torch.ones(3, 2);
        using var c = a.matmul(b);
        Assert.Equal(new float[] { 3, 3, 12, 12 }, c.data<float>().ToArray());
    }
}
