using System.Text.RegularExpressions;

namespace ShardPipe.Checkpoints;

/// <summary>Where to look for a model: what <c>from_pretrained</c> takes besides the name.</summary>
public sealed record LocateOptions
{
    public string? Revision { get; init; }
    public string? Subfolder { get; init; }
    /// <summary>Overrides <c>$HF_HUB_CACHE</c> / <c>$HF_HOME/hub</c> / <c>~/.cache/huggingface/hub</c>.</summary>
    public string? CacheDir { get; init; }
}

/// <summary>
/// Turns a local folder or a Hub repo id into a local folder, offline: a repo id is looked up in the Hugging Face
/// cache layout (<c>models--ORG--NAME/refs/REVISION</c> → <c>snapshots/COMMIT</c>). Nothing is downloaded.
/// </summary>
public static partial class ModelLocator
{
    [GeneratedRegex(@"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")]
    private static partial Regex RepoIdPattern();

    [GeneratedRegex(@"^[0-9a-f]{40}$")]
    private static partial Regex CommitPattern();

    public static string HubCacheRoot(string? overrideDir = null)
    {
        if (!string.IsNullOrEmpty(overrideDir)) return overrideDir;
        string? hub = Environment.GetEnvironmentVariable("HF_HUB_CACHE");
        if (!string.IsNullOrEmpty(hub)) return hub;
        string? home = Environment.GetEnvironmentVariable("HF_HOME");
        if (!string.IsNullOrEmpty(home)) return Path.Combine(home, "hub");
        return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "huggingface", "hub");
    }

    public static string Locate(string pathOrRepoId, LocateOptions? options = null)
    {
        options ??= new LocateOptions();
        if (Directory.Exists(pathOrRepoId))
        {
            string folder = options.Subfolder is { Length: > 0 } sub ? Path.Combine(pathOrRepoId, CheckpointNames.CheckSubfolder(sub)) : pathOrRepoId;
            if (!Directory.Exists(folder))
                throw new CheckpointNotFoundException($"subfolder '{options.Subfolder}' not found in {pathOrRepoId}", new[] { folder });
            return folder;
        }
        var tried = new List<string> { Path.GetFullPath(pathOrRepoId) };
        if (!RepoIdPattern().IsMatch(pathOrRepoId) || pathOrRepoId.Contains("..", StringComparison.Ordinal))
            throw new CheckpointNotFoundException($"'{pathOrRepoId}' is neither a folder nor a repo id", tried);

        string root = HubCacheRoot(options.CacheDir);
        string repoDir = Path.Combine(root, "models--" + pathOrRepoId.Replace("/", "--", StringComparison.Ordinal));
        string revision = options.Revision ?? "main";
        string refFile = Path.Combine(repoDir, "refs", revision);
        tried.Add(refFile);
        string? commit = null;
        if (!revision.Contains("..", StringComparison.Ordinal) && File.Exists(refFile))
            commit = File.ReadAllText(refFile).Trim();
        else if (CommitPattern().IsMatch(revision))
            commit = revision;
        if (commit is null || !CommitPattern().IsMatch(commit))
            throw new CheckpointNotFoundException(
                $"model '{pathOrRepoId}' (revision '{revision}') not found locally (offline: nothing is downloaded)", tried);
        string snapshot = Path.Combine(repoDir, "snapshots", commit);
        if (options.Subfolder is { Length: > 0 } s2) snapshot = Path.Combine(snapshot, CheckpointNames.CheckSubfolder(s2));
        tried.Add(snapshot);
        if (!Directory.Exists(snapshot))
            throw new CheckpointNotFoundException(
                $"model '{pathOrRepoId}' (revision '{revision}') not found locally (offline: nothing is downloaded)", tried);
        return snapshot;
    }
}
