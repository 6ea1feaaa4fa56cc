using System.Runtime.InteropServices;
using ShardPipe.Actors.Workers;
using ShardPipe.Messages;
using ShardPipe.Modeling.Core;
using static TorchSharp.torch;
using ShardPipe.Actors.Transport;

namespace ShardPipe.Tests.Actors;

/// <summary>Tensors through the wire format: one copy on the way out, a tensor over the received frame on the way in.</summary>
public class TensorWireTests
{
    public TensorWireTests() => TorchRuntime.Initialise();

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float64)]
    [InlineData(ScalarType.Int64)]
    public void A_tensor_survives_encode_and_decode_and_the_receiver_shares_the_frame(ScalarType dtype)
    {
        using var source = (rand(3, 17, 129) * 100).to(dtype);
        for (int idLength = 0; idLength < 9; idLength++) // every position of the data within the frame
        {
            var frame = MessageCodec.Encode(new ForwardResult(new string('r', idLength), TensorWire.ToPayload(source)));
            var back = (ForwardResult)MessageCodec.Decode(frame, "fwd-res");
            Assert.True(MemoryMarshal.TryGetArray(back.LastLogits.Data, out var segment));
            Assert.Same(frame, segment.Array); // a view of the frame, not a copy
            Assert.Equal(0, segment.Offset % WireBytes.Alignment);
            using var t = TensorWire.ToTensor(back.LastLogits);
            Assert.Equal(source.shape, t.shape);
            Assert.Equal(source.dtype, t.dtype);
            Assert.True(source.eq(t).all().item<bool>());
            frame[segment.Offset] ^= 0xFF; // the tensor lives in the frame
            Assert.False(source.eq(t).all().item<bool>());
        }
    }

    [Fact]
    public void A_payload_outlives_its_source_tensor_and_a_local_payload_is_copied()
    {
        TensorPayload payload;
        float[] expected;
        using (var scope = NewDisposeScope())
        {
            var t = arange(0, 5000, dtype: ScalarType.Float32).reshape(50, 100).narrow(1, 10, 50); // not contiguous
            expected = t.contiguous().data<float>().ToArray();
            payload = TensorWire.ToPayload(t);
        }
        GC.Collect();
        GC.WaitForPendingFinalizers();
        using var local = TensorWire.ToTensor(payload); // never serialized: copied out of the source's storage
        Assert.Equal(expected, local.data<float>().ToArray());
        var frame = MessageCodec.Encode(new ForwardResult("x", payload));
        using var remote = TensorWire.ToTensor(((ForwardResult)MessageCodec.Decode(frame, "fwd-res")).LastLogits);
        Assert.Equal(expected, remote.data<float>().ToArray());
    }

    [Fact]
    public void Misaligned_bytes_are_copied_rather_than_shared()
    {
        var data = new byte[4 * 10 + 1];
        BitConverter.GetBytes(1.5f).CopyTo(data, 1);
        var payload = new TensorPayload("F32", new long[] { 10 }, data.AsMemory(1));
        using var t = TensorWire.ToTensor(payload);
        Assert.Equal(1.5f, t[0].item<float>());
        data[1] = 0;
        Assert.Equal(1.5f, t[0].item<float>()); // its own copy
        Assert.Null(TensorMemory.Over(data, 1, 40, ScalarType.Float32, new long[] { 10 }));
    }

    [Fact]
    public void A_payload_whose_bytes_do_not_match_its_shape_is_a_protocol_error()
    {
        var payload = new TensorPayload("F32", new long[] { 3, 3 }, new byte[35]);
        var ex = Assert.Throws<ProtocolException>(() => TensorWire.ToTensor(payload));
        Assert.Contains("expected 36", ex.Message);
    }
}
