using System.Text;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Checkpoints;

public class SafeTensorsFormatTests
{
    private static byte[] Pattern(int n, int salt) => Enumerable.Range(0, n).Select(i => (byte)(i * 31 + salt)).ToArray();

    [Fact]
    public void Every_dtype_round_trips_through_a_file()
    {
        using var tmp = new TempDir();
        var sources = new List<TensorSource>();
        int salt = 0;
        foreach (DType dt in Enum.GetValues<DType>())
        {
            long[] shape = { 3, 5 };
            sources.Add(TensorSource.FromBytes("t." + dt, dt, shape, Pattern(15 * DTypes.Size(dt), salt++)));
        }
        sources.Add(TensorSource.FromBytes("scalar", DType.F32, Array.Empty<long>(), Pattern(4, 99)));
        sources.Add(TensorSource.FromBytes("empty", DType.F16, new long[] { 0, 7 }, Array.Empty<byte>()));
        string path = tmp.File("all.safetensors");
        SafeTensorsWriter.Write(path, sources);

        using var file = SafeTensorsFile.Open(path);
        Assert.Equal(sources.Count, file.Tensors.Count);
        Assert.Equal("pt", file.Header.Metadata["format"]);
        Assert.Equal(0, file.Header.DataStart % 8);
        salt = 0;
        foreach (var src in sources)
        {
            var info = file.Get(src.Name);
            Assert.Equal(src.DType, info.DType);
            Assert.Equal(src.Shape, info.Shape);
            var buf = new byte[info.ByteLength];
            file.ReadInto(info, buf);
            var expected = new byte[src.ByteLength];
            src.Fill(expected);
            Assert.Equal(expected, buf);
            using var view = file.Map(info);
            Assert.Equal(expected, view.Span.ToArray());
        }
    }

    [Fact]
    public void Writer_reproduces_reference_shards_byte_for_byte()
    {
        // The reference shards were written by a format-faithful writer; ours must lay out the same bytes.
        using var tmp = new TempDir();
        foreach (var model in new[] { "llama_untied", "gpt2", "llama_bf16" })
        {
            string folder = TestPaths.Model(model);
            foreach (var shard in Directory.GetFiles(folder, "*.safetensors"))
            {
                using var file = SafeTensorsFile.Open(shard);
                var sources = file.Tensors.Select(t =>
                {
                    var bytes = new byte[t.ByteLength];
                    file.ReadInto(t, bytes);
                    return TensorSource.FromBytes(t.Name, t.DType, t.Shape, bytes);
                }).Reverse().ToList(); // input order must not matter: the writer sorts as safetensors does
                string copy = tmp.File(model + "-" + Path.GetFileName(shard));
                SafeTensorsWriter.Write(copy, sources, file.Header.Metadata);
                Assert.Equal(File.ReadAllBytes(shard), File.ReadAllBytes(copy));
            }
        }
    }

    [Theory]
    [InlineData("5MB", 5_000_000)]
    [InlineData("5MiB", 5L << 20)]
    [InlineData("2GB", 2_000_000_000)]
    [InlineData("10KB", 10_000)]
    [InlineData("148KB", 148_000)]
    [InlineData("10GiB", 10L << 30)]
    [InlineData("1024", 1024)]
    [InlineData("5Mb", 625_000)]
    public void Size_strings_follow_hugging_face(string text, long bytes) => Assert.Equal(bytes, ByteSize.Parse(text));

    [Theory]
    [InlineData("")]
    [InlineData("five")]
    [InlineData("-5MB")]
    [InlineData("5XB")]
    public void Bad_size_strings_are_rejected(string text) => Assert.Throws<InvalidInputException>(() => ByteSize.Parse(text));
}
