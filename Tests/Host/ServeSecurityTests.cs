using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using ShardPipe.Actors.Hosting;
using ShardPipe.Host.Serving;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>
/// The server's door: an API key on the API (vLLM's --api-key) with /health open, a list of prompts that counts a
/// slot per prompt (400 beyond what may ever run), token ids outside the vocabulary and prompt + max_tokens past the
/// model's positions refused with 400 — never 503 with Retry-After for a request that can never succeed.
/// </summary>
[Collection("cluster")]
public class ServeSecurityTests
{
    private const string Key = "sk-test-0123456789";

    private static JsonObject Completion(JsonNode prompt, int maxTokens = 4) =>
        new() { ["model"] = "tiny-llama", ["prompt"] = prompt, ["max_tokens"] = maxTokens, ["temperature"] = 0 };

    private static async Task<(int Status, JsonNode? Body, HttpResponseMessage Response)> Post(HttpClient http, string path, JsonObject body, string? key = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body) };
        if (key is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        var response = await http.SendAsync(request);
        string text = await response.Content.ReadAsStringAsync();
        return ((int)response.StatusCode, text.Length > 0 ? JsonNode.Parse(text) : null, response);
    }

    private static async Task<int> Get(HttpClient http, string path, string? key = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, path);
        if (key is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return (int)(await http.SendAsync(request)).StatusCode;
    }

    [Fact]
    public async Task An_api_key_guards_the_api_and_bad_requests_are_400_not_503()
    {
        using var tmp = new TempDir();
        string folder = ServeTests.ModelWithTokenizer(tmp);
        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=1GiB");
        var (server, http) = await ServeTests.Serve(folder, cluster, maxActive: 4, adjust: s => s with { ApiKey = Key });
        await using var _ = server;
        using var __ = http;

        // Without the key, or with another: 401 with OpenAI's error body, before anything runs.
        var (status, body, _) = await Post(http, "/v1/completions", Completion(JsonValue.Create("hello")!));
        Assert.Equal(401, status);
        Assert.Equal("invalid_api_key", body!["error"]!["code"]!.GetValue<string>());
        Assert.Equal(401, (await Post(http, "/v1/completions", Completion(JsonValue.Create("hello")!), "sk-wrong-key-000000")).Status);
        Assert.Equal(401, await Get(http, "/v1/models"));
        Assert.Equal(401, (await Post(http, "/tokenize", new JsonObject { ["prompt"] = "hi" })).Status);
        // Probes and the status pages stay open (no --protect-status).
        Assert.Equal(200, await Get(http, "/health"));
        Assert.Equal(200, await Get(http, "/status"));
        // With the key: served.
        Assert.Equal(200, await Get(http, "/v1/models", Key));
        var ok = await Post(http, "/v1/completions", Completion(JsonValue.Create("hello")!), Key);
        Assert.Equal(200, ok.Status);

        // A list of prompts takes a slot per prompt: more than may ever run at once (4) is a 400, not a queue.
        var many = new JsonArray(Enumerable.Range(0, 2000).Select(i => (JsonNode)JsonValue.Create($"prompt {i}")!).ToArray());
        var tooMany = await Post(http, "/v1/completions", Completion(many), Key);
        Assert.Equal(400, tooMany.Status);
        Assert.Contains("at most 4 prompts", tooMany.Body!["error"]!["message"]!.GetValue<string>());
        var four = await Post(http, "/v1/completions", Completion(new JsonArray("a", "b", "c", "d")), Key);
        Assert.Equal(200, four.Status);
        Assert.Equal(4, four.Body!["choices"]!.AsArray().Count);

        // Token ids outside the vocabulary (256): 400 naming the token, no Retry-After.
        var oov = await Post(http, "/v1/completions", Completion(new JsonArray(5, 17, 256)), Key);
        Assert.Equal(400, oov.Status);
        Assert.Contains("token 2 is 256, outside the model's vocabulary", oov.Body!["error"]!["message"]!.GetValue<string>());
        Assert.False(oov.Response.Headers.Contains("Retry-After"));
        Assert.Equal(400, (await Post(http, "/v1/completions", Completion(new JsonArray(5, -1)), Key)).Status);

        // Prompt + max_tokens past the model's 256 positions: 400 naming max_tokens, before a slot is taken.
        var tooLong = await Post(http, "/v1/completions", Completion(new JsonArray(5, 17, 42), maxTokens: 254), Key);
        Assert.Equal(400, tooLong.Status);
        Assert.Equal("max_tokens", tooLong.Body!["error"]!["param"]!.GetValue<string>());
        Assert.Contains("context is 256 tokens", tooLong.Body!["error"]!["message"]!.GetValue<string>());
        Assert.Equal(200, (await Post(http, "/v1/completions", Completion(new JsonArray(5, 17, 42), maxTokens: 3), Key)).Status);
    }

    [Fact]
    public async Task Protected_status_pages_need_the_key_and_health_never_does()
    {
        using var tmp = new TempDir();
        string folder = ServeTests.ModelWithTokenizer(tmp);
        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=1GiB");
        var (server, http) = await ServeTests.Serve(folder, cluster, adjust: s => s with { ApiKey = Key, ProtectStatus = true });
        await using var _ = server;
        using var __ = http;
        Assert.Equal(401, await Get(http, "/status"));
        Assert.Equal(401, await Get(http, "/metrics"));
        Assert.Equal(401, await Get(http, "/"));
        Assert.Equal(200, await Get(http, "/health"));
        Assert.Equal(200, await Get(http, "/status", Key));
        Assert.Equal(200, await Get(http, "/metrics", Key));
    }

    [Fact]
    public void Access_rules_and_the_key_comparison()
    {
        Assert.True(ServeAccess.NeedsKey("/v1/chat/completions", false));
        Assert.True(ServeAccess.NeedsKey("/tokenize", false));
        Assert.False(ServeAccess.NeedsKey("/health", true));
        Assert.False(ServeAccess.NeedsKey("/status", false));
        Assert.True(ServeAccess.NeedsKey("/status", true));
        Assert.True(ServeAccess.Presents("Bearer " + Key, Key));
        Assert.True(ServeAccess.Presents("bearer  " + Key + " ", Key));
        Assert.False(ServeAccess.Presents(Key, Key));
        Assert.False(ServeAccess.Presents("Bearer " + Key + "x", Key));
        Assert.False(ServeAccess.Presents(null, Key));
    }

    [Fact]
    public async Task A_list_of_prompts_holds_a_slot_per_prompt()
    {
        var admission = new ServingAdmission(maxActive: 3, maxQueued: 0);
        using (var two = await admission.EnterAsync(CancellationToken.None, prompts: 2))
        {
            Assert.Equal(2, admission.Active);
            using var one = await admission.EnterAsync(CancellationToken.None);
            Assert.Equal(3, admission.Active);
            Assert.Equal(429, (await Assert.ThrowsAsync<OpenAiException>(() => admission.EnterAsync(CancellationToken.None))).Status);
        }
        Assert.Equal(0, admission.Active);
        Assert.Equal(400, (await Assert.ThrowsAsync<OpenAiException>(() => admission.EnterAsync(CancellationToken.None, prompts: 4))).Status);
    }
}
