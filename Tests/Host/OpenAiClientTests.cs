using System.Diagnostics;
using System.Text.Json.Nodes;
using ShardPipe.Actors.Hosting;
using ShardPipe.Modeling.Tokenization;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>
/// The official <c>openai</c> npm client (installed from the npm registry into a cache folder once) against the server
/// on an embedded 3-node cluster: a completion, a streamed one, and a chat completion streamed and not, each equal to
/// <c>shardpipe generate</c> (<c>ops/openai-client.mjs</c>, which <c>ops/openai-check.sh</c> also runs).
/// </summary>
[Collection("cluster")]
public class OpenAiClientTests
{
    private static string NpmClient()
    {
        string dir = Path.Combine(Path.GetTempPath(), "shardpipe-openai-npm");
        if (File.Exists(Path.Combine(dir, "node_modules", "openai", "package.json"))) return dir;
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "package.json"), "{\"name\": \"shardpipe-openai-check\", \"private\": true, \"type\": \"module\"}");
        var npm = Run("npm", dir, TimeSpan.FromMinutes(4), "install", "--no-audit", "--no-fund", "openai@7");
        Assert.True(npm.Code == 0, $"npm install openai (the npm registry must be reachable): exit {npm.Code}\n{npm.Output}");
        return dir;
    }

    private static (int Code, string Output) Run(string file, string cwd, TimeSpan timeout, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { WorkingDirectory = cwd, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            return (-1, $"{file} did not finish within {timeout.TotalSeconds:0} s");
        }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    private static string Generate(string folder, string prompt, int maxNew)
    {
        var cli = ShardPipeProcess.Run("generate", "--model", folder, "--prompt", prompt, "--max-new-tokens", maxNew.ToString(), "--greedy", "--json");
        Assert.True(cli.ExitCode == 0, cli.Stderr);
        return JsonNode.Parse(cli.Stdout)!["text"]![0]!.GetValue<string>();
    }

    [Fact]
    public async Task The_official_openai_client_gets_generate_s_text_streamed_and_not_and_in_chat()
    {
        string npm = NpmClient();
        using var tmp = new TempDir();
        string folder = ServeTests.ModelWithTokenizer(tmp);
        const string prompt = "Hello from the openai client";
        var messages = new JsonArray(new JsonObject { ["role"] = "system", ["content"] = "Be brief." }, new JsonObject { ["role"] = "user", ["content"] = "Hi!" });
        string rendered = ServeTests.RenderChatMl(("system", "Be brief."), ("user", "Hi!"));

        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var (server, http) = await ServeTests.Serve(folder, cluster);
        await using var _ = server;
        using var __ = http;
        var check = new JsonObject
        {
            ["baseURL"] = new Uri(server.Address, "v1").ToString(), ["model"] = "tiny-llama", ["prompt"] = prompt, ["maxTokens"] = 12,
            ["expected"] = Generate(folder, prompt, 12),
            ["chat"] = new JsonObject { ["messages"] = messages, ["expected"] = Generate(folder, rendered, 12) },
        };
        File.WriteAllText(Path.Combine(npm, "check.json"), check.ToJsonString());
        File.Copy(Path.Combine(TestPaths.RepoRoot, "ops", "openai-client.mjs"), Path.Combine(npm, "openai-client.mjs"), overwrite: true);
        var node = await Task.Run(() => Run("node", npm, TimeSpan.FromMinutes(2), "openai-client.mjs", "check.json"));
        Assert.True(node.Code == 0, node.Output);
        Assert.Contains("ok: the openai client's completions equal shardpipe generate", node.Output);
        Assert.Contains("streamed chat completion", node.Output);
    }

    /// <summary>
    /// Tool calls through the official client. The model's text comes from the server's test hook
    /// (<see cref="ShardPipe.Host.Serving.ServeSettings.InjectedOutput"/>), not the tiny model, whose output is noise; the
    /// hook answers with a Hermes/Qwen &lt;tool_call&gt; only when the prompt the published Qwen3 template rendered lists
    /// the tools, and with text once the prompt carries the tool's result — so the real prompt building, tool-call
    /// parsing and OpenAI shapes (tool_calls, streamed deltas, finish_reason) are what is checked.
    /// </summary>
    [Fact]
    public async Task The_official_openai_client_gets_tool_calls_streamed_and_not()
    {
        string npm = NpmClient();
        using var tmp = new TempDir();
        string folder = ServeTests.ModelWithTokenizer(tmp, chatTemplate: false);
        File.Copy(Path.Combine(TestPaths.RepoRoot, "Tests", "Modeling", "Fixtures", "chat-templates", "qwen3.jinja"), tmp.File("chat_template.jinja"));
        // Qwen3's tool preamble alone is longer than the tiny model's 256 positions; the model never runs here (the hook
        // answers), so its context is widened in the copy.
        var config = JsonNode.Parse(File.ReadAllText(tmp.File("config.json")))!.AsObject();
        config["max_position_embeddings"] = 4096;
        File.WriteAllText(tmp.File("config.json"), config.ToJsonString());
        var prompts = new List<string>();
        string Reply(string prompt)
        {
            lock (prompts) prompts.Add(prompt);
            if (prompt.Contains("<tool_response>") && prompt.Contains("{\"temperature\":21}")) return "It is 21 degrees in Zürich.";
            if (prompt.Contains("<tools>") && prompt.Contains("\"name\": \"get_weather\"")) return "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>";
            return "no tools were offered";
        }

        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=1GiB");
        var (server, http) = await ServeTests.Serve(folder, cluster, injectedOutput: Reply);
        await using var _ = server;
        using var __ = http;
        var conversations = JsonNode.Parse(File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "Tests", "Modeling", "Fixtures", "chat-templates", "conversations.json")))!;
        var check = new JsonObject
        {
            ["baseURL"] = new Uri(server.Address, "v1").ToString(), ["model"] = "tiny-llama", ["prompt"] = "Hi", ["maxTokens"] = 64, ["expected"] = null, ["chat"] = null,
            ["tools"] = new JsonObject
            {
                ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "What's the weather in Zürich?" }),
                ["tools"] = conversations["tools"]!.DeepClone(),
                ["name"] = "get_weather",
                ["arguments"] = new JsonObject { ["city"] = "Zürich" },
                ["answer"] = "It is 21 degrees in Zürich.",
            },
        };
        File.WriteAllText(Path.Combine(npm, "tools-check.json"), check.ToJsonString());
        File.Copy(Path.Combine(TestPaths.RepoRoot, "ops", "openai-client.mjs"), Path.Combine(npm, "openai-client.mjs"), overwrite: true);
        var node = await Task.Run(() => Run("node", npm, TimeSpan.FromMinutes(2), "openai-client.mjs", "tools-check.json", "--tools-only"));
        Assert.True(node.Code == 0, node.Output);
        Assert.Contains("ok: tool calls through the openai client", node.Output);
        // The follow-up prompt carried the assistant's call back in Qwen3's format, arguments written by tojson.
        Assert.Contains(prompts, p => p.Contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>"));
    }
}
