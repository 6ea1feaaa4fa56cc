using System.CommandLine;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;
using ShardPipe.Messages;

namespace ShardPipe.Host.Commands;

/// <summary>
/// <c>shardpipe demo</c>: the zero-setup main job. Generates a small sharded Llama (random weights, a 256-token
/// byte vocabulary), starts an embedded cluster of N nodes on loopback, loads the model split across them, and
/// generates from a prompt: prints the device map, the text and tokens/s.
/// </summary>
public static class DemoCommand
{
    public static Command Create()
    {
        var dir = new Option<string?>("--dir") { Description = "Where to generate the demo checkpoint (default: a temp folder)" };
        var nodes = new Option<int>("--nodes") { Description = "Embedded cluster nodes", DefaultValueFactory = _ => 3 };
        var prompt = new Option<string>("--prompt") { Description = "Prompt text (bytes are the token ids of this model)", DefaultValueFactory = _ => "Hello, cluster!" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens to generate", DefaultValueFactory = _ => 24 };
        var json = CommonOptions.Json();
        var cmd = new Command("demo", "Generate a small model and run it across an embedded multi-node cluster (no setup)") { dir, nodes, prompt, maxNew, json };
        CommandAction.Set(cmd, (parse, log) => Run(parse.GetValue(dir), parse.GetValue(nodes), parse.GetValue(prompt)!, parse.GetValue(maxNew), parse.GetValue(json), log));
        return cmd;
    }

    private static async Task<int> Run(string? dir, int nodes, string prompt, int maxNew, bool json, ILogger log)
    {
        if (nodes < 1) throw new InvalidInputException("--nodes must be at least 1");
        string folder = dir ?? Path.Combine(Path.GetTempPath(), "shardpipe-demo");
        var spec = new SyntheticLlamaSpec { HiddenSize = 128, IntermediateSize = 344, NumLayers = 6, NumHeads = 4, NumKeyValueHeads = 2, VocabSize = 256, MaxShardSize = "500KB" };
        var files = SyntheticLlama.Write(folder, spec);
        log.LogInformation("generated a {Layers}-layer Llama ({Files} files) in {Folder}", spec.NumLayers, files.Count, folder);
        var ids = Encoding.UTF8.GetBytes(prompt).Select(b => (long)b).ToArray();
        if (ids.Length == 0) throw new InvalidInputException("--prompt is empty");

        await using var session = await ClusterSession.ConnectAsync($"embedded:{nodes}", null, log);
        var (stages, map, loadS) = await session.EnsureLoadedAsync(new LoadModel(Guid.NewGuid().ToString("N"), folder, null, "float32", "balanced", null, null), log, json);
        var outcome = await session.Client.RunAsync(new Generate(Guid.NewGuid().ToString("N"), new[] { ids }, null, maxNew, true,
            new SamplingSettings(true, 0, 0, 1, 0)), stages, TimeSpan.FromSeconds(60));
        string text = Decode(outcome.NewTokens[0]);
        if (json)
        {
            JsonOut.Print(new JsonObject
            {
                ["model"] = folder,
                ["hf_device_map"] = map,
                ["prompt"] = prompt,
                ["tokens"] = new JsonArray(outcome.NewTokens[0].Select(t => (JsonNode)JsonValue.Create(t)).ToArray()),
                ["text"] = text,
                ["load_s"] = Math.Round(loadS, 4),
                ["tokens_per_s"] = Math.Round(outcome.TokensPerSecond, 3),
            });
            return 0;
        }
        Console.WriteLine($"Model: {folder} (random weights; a byte-level vocabulary, so the text is noise)");
        Console.WriteLine($"Cluster: {nodes} embedded nodes on loopback TCP, loaded in {loadS:0.00} s");
        Tables.Print(new[] { "module", "device" }, map.Select(kv => new[] { kv.Key, kv.Value?.ToString() ?? "" }), "device map");
        Console.WriteLine($"Prompt: {prompt}");
        Console.WriteLine($"Generated ({outcome.Steps} tokens): {text}");
        Console.WriteLine($"Tokens: {string.Join(",", outcome.NewTokens[0])}");
        Console.WriteLine($"Speed: {outcome.TokensPerSecond:0.0} tokens/s (prefill {outcome.PrefillSeconds:0.000} s)");
        return 0;
    }

    /// <summary>Token ids are bytes; show printable ASCII as is and everything else as \xNN.</summary>
    private static string Decode(long[] tokens) =>
        string.Concat(tokens.Select(t => t is >= 32 and < 127 ? ((char)t).ToString() : $"\\x{t:x2}"));
}
