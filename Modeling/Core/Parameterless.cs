using static TorchSharp.torch;

namespace ShardPipe.Modeling.Core;

/// <summary>
/// A child module without tensors (dropout, activation). It computes nothing here (inference only) but is part of
/// HF's module tree, so device maps name it as Accelerate does (e.g. <c>transformer.drop</c>).
/// </summary>
public sealed class Parameterless : HfModule
{
    private readonly string _className;
    public override string ClassName => _className;

    public Parameterless(string className) => _className = className;

    /// <summary>A dropout's forward at inference: the identity, run where HF runs it (so its memory hook records).</summary>
    public Tensor Forward(Tensor x)
    {
        using var hook = Hook();
        return x;
    }
}
