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
}
