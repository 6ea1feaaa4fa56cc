namespace ShardPipe.Tests.Support;

/// <summary>Finds the shared reference data (<c>../shared</c> beside the repository) and makes scratch folders.</summary>
public static class TestPaths
{
    private static readonly Lazy<string> Shared = new(FindShared);

    public static string SharedDir => Shared.Value;
    public static string HfReference => Path.Combine(SharedDir, "hf-reference");
    public static string Models => Path.Combine(HfReference, "models");
    public static string DeviceMaps => Path.Combine(HfReference, "device-maps");
    /// <summary>The public GPT-2 after <c>prune_heads({0: [1, 2], 1: [0]})</c>, saved and reloaded by transformers.</summary>
    public static string PrunedGpt2 => Path.Combine(HfReference, "pruned", "gpt2_pruned");

    public static IEnumerable<string> ModelNames =>
        Directory.GetDirectories(Models).Select(Path.GetFileName).Order(StringComparer.Ordinal)!;

    public static string Model(string name) => Path.Combine(Models, name);

    /// <summary>More architectures (Mixtral, Gemma, Phi), kept apart from <see cref="Models"/>.</summary>
    public static string Families => Path.Combine(HfReference, "families");
    public static string FamilyDeviceMaps => Path.Combine(Families, "device-maps");

    public static IEnumerable<string> FamilyNames =>
        Directory.GetDirectories(Families).Select(Path.GetFileName).Where(n => n != "device-maps").Order(StringComparer.Ordinal)!;

    /// <summary>The repository root (holds Cluster.sln).</summary>
    public static string RepoRoot
    {
        get
        {
            var d = new DirectoryInfo(AppContext.BaseDirectory);
            while (d is not null && !File.Exists(Path.Combine(d.FullName, "Cluster.sln"))) d = d.Parent;
            return d?.FullName ?? throw new InvalidOperationException("Cluster.sln not found above " + AppContext.BaseDirectory);
        }
    }

    private static string FindShared()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null)
        {
            foreach (var candidate in new[] { Path.Combine(d.FullName, "shared"), Path.Combine(d.FullName, "..", "shared") })
                if (Directory.Exists(Path.Combine(candidate, "hf-reference"))) return Path.GetFullPath(candidate);
            d = d.Parent;
        }
        throw new InvalidOperationException("shared/hf-reference not found beside the repository (expected ../shared)");
    }
}

/// <summary>A temporary folder deleted on dispose.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "shardpipe-test-" + Guid.NewGuid().ToString("N")[..12]);

    public TempDir() => Directory.CreateDirectory(Path);

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public string Sub(string name)
    {
        string p = System.IO.Path.Combine(Path, name);
        Directory.CreateDirectory(p);
        return p;
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>Copies a reference model folder so a test may break it.</summary>
public static class ModelCopies
{
    public static string CopyModel(string source, string destination)
    {
        Directory.CreateDirectory(destination);
        foreach (var f in Directory.GetFiles(source))
        {
            string dst = Path.Combine(destination, Path.GetFileName(f));
            File.Copy(f, dst, overwrite: true);
            File.SetAttributes(dst, FileAttributes.Normal);
        }
        return destination;
    }
}
