namespace ShardPipe.Checkpoints;

/// <summary>Path rules shared by every check that a file or folder lies inside another (model roots, cache blobs, offload folders).</summary>
public static class PathRules
{
    /// <summary>
    /// Whether <paramref name="path"/> is <paramref name="root"/> or lies inside it, compared as full paths and by whole
    /// folder names: <c>/models2/x</c> is not under <c>/models</c>.
    /// </summary>
    public static bool IsUnder(string path, string root)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        string top = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        return full == top || full.StartsWith(top.EndsWith(Path.DirectorySeparatorChar) ? top : top + Path.DirectorySeparatorChar, StringComparison.Ordinal);
    }
}
