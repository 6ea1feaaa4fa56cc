namespace ShardPipe.Checkpoints.SafeTensors;

/// <summary>One tensor's entry in a safetensors header: dtype, shape and its byte range within the data section.</summary>
public sealed record TensorInfo(string Name, DType DType, long[] Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;

    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (long d in Shape) n = checked(n * d);
            return n;
        }
    }
}
