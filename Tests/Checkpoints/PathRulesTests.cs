using ShardPipe.Checkpoints;

namespace ShardPipe.Tests.Checkpoints;

public class PathRulesTests
{
    [Theory]
    [InlineData("/models/llama", "/models", true)]
    [InlineData("/models", "/models", true)]
    [InlineData("/models/", "/models", true)]
    [InlineData("/models/a/b/../c", "/models/", true)]
    [InlineData("/models2/llama", "/models", false)] // a sibling sharing the prefix is not inside
    [InlineData("/models/../etc", "/models", false)]
    [InlineData("/", "/models", false)]
    public void A_path_is_under_a_root_by_whole_folder_names(string path, string root, bool under) =>
        Assert.Equal(under, PathRules.IsUnder(path, root));
}
