using System.Text;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.SafeTensors;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Checkpoints;

/// <summary>Every reader rule has a malformed file that breaks it, and the error names file and tensor.</summary>
public class ValidationTests
{
    private static byte[] Build(string json, int dataBytes, ulong? headerLength = null)
    {
        var h = Encoding.UTF8.GetBytes(json);
        var bytes = new byte[8 + h.Length + dataBytes];
        BitConverter.GetBytes(headerLength ?? (ulong)h.Length).CopyTo(bytes, 0);
        h.CopyTo(bytes, 8);
        return bytes;
    }

    private static CheckpointFormatException Reject(byte[] bytes, string name = "bad.safetensors")
    {
        var ex = Assert.Throws<CheckpointFormatException>(() => SafeTensorsHeader.ReadFrom(name, bytes));
        Assert.Contains(name, ex.Message);
        // The same bytes on disk fail the same way through the file reader.
        using var tmp = new TempDir();
        File.WriteAllBytes(tmp.File(name), bytes);
        var ex2 = Assert.Throws<CheckpointFormatException>(() => SafeTensorsFile.Open(tmp.File(name)).Dispose());
        Assert.Equal(Path.GetFileName(ex.File), Path.GetFileName(ex2.File));
        return ex;
    }

    private const string Good = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[8,12]}}";

    [Fact]
    public void A_well_formed_file_is_accepted() => Assert.Equal(2, SafeTensorsHeader.ReadFrom("ok", Build(Good, 12)).Tensors.Count);

    [Fact]
    public void File_shorter_than_the_length_prefix_is_rejected() => Assert.Contains("shorter", Reject(new byte[5]).Message);

    [Fact]
    public void Header_over_100_MB_is_rejected() => Assert.Contains("limit", Reject(Build(Good, 12, 100_000_001)).Message);

    [Fact]
    public void Header_running_past_the_end_is_rejected() => Assert.Contains("past the end", Reject(Build(Good, 12, 5000)).Message);

    [Fact]
    public void Invalid_json_is_rejected() => Assert.Contains("JSON", Reject(Build("{\"a\":{\"dtype\":", 0)).Message);

    [Fact]
    public void Header_that_is_not_an_object_is_rejected() => Assert.Contains("'{'", Reject(Build("[1,2]   ", 0)).Message);

    [Fact]
    public void Unknown_dtype_is_rejected()
    {
        var ex = Reject(Build(Good.Replace("\"I8\"", "\"Q4\""), 12));
        Assert.Equal("b", ex.Tensor);
        Assert.Contains("unknown dtype 'Q4'", ex.Message);
    }

    [Fact]
    public void Offsets_past_the_data_section_are_rejected()
    {
        var ex = Reject(Build(Good, 10));
        Assert.Contains("past the end of the data section", ex.Message);
    }

    [Fact]
    public void Overlapping_offsets_are_rejected()
    {
        string json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[4,8]}}";
        var ex = Reject(Build(json, 8));
        Assert.Contains("overlap", ex.Message);
        Assert.Equal("b", ex.Tensor);
    }

    [Fact]
    public void Gaps_between_tensors_are_rejected()
    {
        string json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[10,14]}}";
        Assert.Contains("gap", Reject(Build(json, 14)).Message);
    }

    [Fact]
    public void Unused_bytes_after_the_last_tensor_are_rejected() => Assert.Contains("cover only", Reject(Build(Good, 16)).Message);

    [Fact]
    public void Byte_length_must_equal_shape_times_dtype_size()
    {
        var ex = Reject(Build(Good.Replace("\"shape\":[2]", "\"shape\":[3]"), 12));
        Assert.Equal("a", ex.Tensor);
        Assert.Contains("needs 12", ex.Message);
    }

    [Fact]
    public void Shape_overflow_is_a_format_error()
    {
        string json = "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,8]}}";
        Assert.Contains("overflow", Reject(Build(json, 8)).Message);
    }

    [Fact]
    public void Reversed_offsets_are_rejected() =>
        Assert.Contains("end before", Reject(Build(Good.Replace("[0,8]", "[8,0]"), 12)).Message);

    [Fact]
    public void Negative_or_fractional_shapes_are_rejected()
    {
        Reject(Build(Good.Replace("\"shape\":[2]", "\"shape\":[-2]"), 12));
        Reject(Build(Good.Replace("\"shape\":[2]", "\"shape\":[2.5]"), 12));
    }

    [Fact]
    public void Metadata_values_must_be_strings()
    {
        string json = "{\"__metadata__\":{\"format\":1}," + Good[1..];
        Assert.Contains("__metadata__", Reject(Build(json, 12)).Message);
    }

    [Fact]
    public void Metadata_is_read_as_a_string_map()
    {
        string json = "{\"__metadata__\":{\"format\":\"pt\",\"x\":\"y\"}," + Good[1..];
        var h = SafeTensorsHeader.ReadFrom("ok", Build(json, 12));
        Assert.Equal("y", h.Metadata["x"]);
    }

    [Fact]
    public void A_tensor_listed_twice_is_rejected()
    {
        string json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[8,12]}}";
        Assert.Contains("twice", Reject(Build(json, 12)).Message);
    }

    [Fact]
    public void Missing_fields_and_unknown_fields_are_rejected()
    {
        Reject(Build("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8));
        Reject(Build("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8));
        Reject(Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8));
        Reject(Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8));
        Reject(Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", 8));
    }

    [Fact]
    public void Trailing_bytes_after_the_json_object_are_rejected() =>
        Reject(Build(Good + "{}", 12));

    [Fact]
    public void Space_padding_after_the_json_object_is_accepted() =>
        Assert.Equal(2, SafeTensorsHeader.ReadFrom("ok", Build(Good + "      ", 12)).Tensors.Count);
}

/// <summary>Names from users and messages (variant, subfolder) cannot reach outside the model folder.</summary>
public class NameConfinementTests
{
    [Theory]
    [InlineData("/../../x/y")]
    [InlineData("..")]
    [InlineData("a/b")]
    [InlineData("fp16\\..\\x")]
    [InlineData("")]
    public void A_variant_that_is_not_a_plain_name_is_refused(string variant)
    {
        var ex = Assert.Throws<InvalidInputException>(() => ShardPipe.Checkpoints.Checkpoint.Open(ShardPipe.Tests.Support.TestPaths.Model("llama_untied"), variant));
        Assert.Contains("variant", ex.Message);
    }

    [Theory]
    [InlineData("../llama_tied")]
    [InlineData("/etc")]
    public void A_subfolder_outside_the_model_folder_is_refused(string subfolder) =>
        Assert.Throws<InvalidInputException>(() => ShardPipe.Checkpoints.ModelLocator.Locate(ShardPipe.Tests.Support.TestPaths.Model("llama_untied"),
            new ShardPipe.Checkpoints.LocateOptions { Subfolder = subfolder }));

    [Fact]
    public void Plain_variants_still_work() =>
        Assert.NotEmpty(ShardPipe.Checkpoints.Checkpoint.Open(ShardPipe.Tests.Support.TestPaths.Model("llama_variant_fp16"), "fp16").Tensors);
}
