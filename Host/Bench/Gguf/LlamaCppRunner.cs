using System.Diagnostics;
using System.Text.Json.Nodes;

namespace ShardPipe.Host.Bench.Gguf;

/// <summary>
/// llama.cpp through node-llama-cpp 3.21.1 (prebuilt CPU binaries from npm, installed once into a cache folder) running
/// <c>ops/llamacpp/run.mjs</c> on a GGUF file; each call is one node process and returns the script's JSON object.
/// </summary>
public sealed class LlamaCppRunner
{
    public const string Package = "node-llama-cpp@3.21.1";
    private const string Script = "run.mjs";
    private readonly string _dir;

    private LlamaCppRunner(string dir) => _dir = dir;

    /// <summary>The cache folder (default: shardpipe-llamacpp-npm under the temp folder) with the package installed and the script beside it.</summary>
    public static LlamaCppRunner Prepare(string? cacheDir = null, string? script = null)
    {
        string dir = cacheDir ?? Path.Combine(Path.GetTempPath(), "shardpipe-llamacpp-npm");
        Directory.CreateDirectory(dir);
        if (!File.Exists(Path.Combine(dir, "node_modules", "node-llama-cpp", "package.json")))
        {
            File.WriteAllText(Path.Combine(dir, "package.json"), "{\"name\": \"shardpipe-llamacpp\", \"private\": true, \"type\": \"module\"}");
            var (code, output) = Run("npm", dir, TimeSpan.FromMinutes(8), "install", "--no-audit", "--no-fund", Package);
            if (code != 0) throw new ClusterException($"npm install {Package} in {dir} failed (exit {code}); the npm registry must be reachable:\n{output}");
        }
        string source = script ?? FindScript() ?? throw new InvalidInputException("ops/llamacpp/run.mjs not found above the working folder or the program; pass --script");
        File.Copy(source, Path.Combine(dir, Script), overwrite: true);
        return new LlamaCppRunner(dir);
    }

    /// <summary>Runs the script with <paramref name="args"/>; its stdout must be one JSON object.</summary>
    public JsonObject Invoke(TimeSpan timeout, params string[] args)
    {
        var (code, output) = Run("node", _dir, timeout, new[] { Script }.Concat(args).ToArray(), out string stdout);
        if (code != 0) throw new ClusterException($"node {Script} {string.Join(' ', args)} exited {code}:\n{output}");
        string line = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault() ?? "";
        return JsonNode.Parse(line) as JsonObject ?? throw new ClusterException($"node {Script}: no JSON object on stdout:\n{output}");
    }

    private static string? FindScript()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
            {
                string candidate = Path.Combine(d.FullName, "ops", "llamacpp", Script);
                if (File.Exists(candidate)) return candidate;
            }
        return null;
    }

    private static (int Code, string Output) Run(string file, string cwd, TimeSpan timeout, params string[] args) => Run(file, cwd, timeout, args, out _);

    private static (int Code, string Output) Run(string file, string cwd, TimeSpan timeout, string[] args, out string stdout)
    {
        var psi = new ProcessStartInfo(file) { WorkingDirectory = cwd, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var outTask = p.StandardOutput.ReadToEndAsync();
        var errTask = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            stdout = "";
            return (-1, $"{file} did not finish within {timeout.TotalSeconds:0} s");
        }
        stdout = outTask.Result;
        return (p.ExitCode, stdout + errTask.Result);
    }
}
