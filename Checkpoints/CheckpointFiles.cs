namespace ShardPipe.Checkpoints;

/// <summary>Resolves file names inside a model folder, following symlinks only the way the Hugging Face cache uses them.</summary>
public static class CheckpointFiles
{
    /// <summary>
    /// The path of <paramref name="name"/> in <paramref name="folder"/>. A symlink is accepted only when the
    /// folder is a hub-cache snapshot (<c>models--ORG--NAME/snapshots/COMMIT[/sub]</c>) and the link ends in that
    /// same repo's <c>blobs/</c>; any other symlink is refused.
    /// </summary>
    public static string Resolve(string folder, string name)
    {
        string path = Path.Combine(folder, name);
        var info = new FileInfo(path);
        if (info.LinkTarget is null) return path;
        FileSystemInfo? target = info.ResolveLinkTarget(returnFinalTarget: true);
        string? repo = HubRepoRoot(Path.GetFullPath(folder));
        if (target is null || repo is null)
            throw new CheckpointFormatException(path, null, $"is a symlink to '{info.LinkTarget}', followed only inside a Hugging Face cache snapshot");
        string blobs = Path.Combine(repo, "blobs");
        string resolved = Path.GetFullPath(target.FullName);
        if (!PathRules.IsUnder(resolved, blobs) || resolved == Path.GetFullPath(blobs))
            throw new CheckpointFormatException(path, null, $"is a symlink to '{resolved}', outside this repo's blobs/ folder");
        if (!File.Exists(resolved))
            throw new CheckpointFormatException(path, null, $"is a broken symlink to '{resolved}'");
        return resolved;
    }

    /// <summary>For a folder inside <c>models--X--Y/snapshots/COMMIT</c>, the <c>models--X--Y</c> folder; otherwise null.</summary>
    internal static string? HubRepoRoot(string folder)
    {
        var dir = new DirectoryInfo(folder);
        while (dir is not null)
        {
            if (dir.Parent is { Name: "snapshots" } snapshots && snapshots.Parent is { } repo &&
                repo.Name.StartsWith("models--", StringComparison.Ordinal))
                return repo.FullName;
            dir = dir.Parent;
        }
        return null;
    }
}
