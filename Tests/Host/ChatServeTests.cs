using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using ShardPipe.Actors.Hosting;
using ShardPipe.Modeling.Tokenization;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>
/// Chat serving over real HTTP on an embedded cluster: vLLM's /tokenize and /detokenize, a failing template answered
/// with a 400 naming the template and line, tool_choice, and a Llama-JSON tool call. The model's text comes from the
/// server's test hook (<see cref="ShardPipe.Host.Serving.ServeSettings.InjectedOutput"/>); the prompt building, parsing
/// and response shapes are the real ones.
/// </summary>
[Collection("cluster")]
public class ChatServeTests
{
    private const string Template = "{{ bos_token }}{% for m in messages %}{% if m.role == 'boom' %}{{ raise_exception('no boom role') }}{% endif %}"
        + "[{{ m.role }}]{{ m.content }}{% endfor %}{% if tools %}[tools]{{ tools | map(attribute='function.name') | join(',') }}{% endif %}"
        + "{% if add_generation_prompt %}[assistant]{% endif %}";

    [Fact]
    public async Task Tokenize_detokenize_template_errors_and_tool_calls()
    {
        using var tmp = new TempDir();
        string folder = ServeTests.ModelWithTokenizer(tmp, chatTemplate: false);
        File.WriteAllText(tmp.File("chat_template.jinja"), Template);
        var tok = ModelTokenizer.Load(folder);
        string Reply(string prompt) => prompt.Contains("[tools]") ? "{\"name\": \"add\", \"parameters\": {\"a\": 1, \"b\": 2}}" : "plain answer";

        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=1GiB");
        var (server, http) = await ServeTests.Serve(folder, cluster, injectedOutput: Reply);
        await using var _ = server;
        using var __ = http;

        // /tokenize of a prompt, and of messages (the chat prompt, no special tokens added); /detokenize back.
        var t = (await (await http.PostAsJsonAsync("/tokenize", new JsonObject { ["prompt"] = "héllo", ["return_token_strs"] = true })).Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.Equal(tok.Encode("héllo").Ids, t["tokens"]!.AsArray().Select(x => x!.GetValue<int>()));
        Assert.Equal(t["tokens"]!.AsArray().Count, t["count"]!.GetValue<int>());
        Assert.Equal(tok.Encode("héllo").Tokens, t["token_strs"]!.AsArray().Select(x => x!.GetValue<string>()));
        var messages = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "Hi" });
        var m = (await (await http.PostAsJsonAsync("/tokenize", new JsonObject { ["messages"] = messages.DeepClone(), ["add_generation_prompt"] = true })).Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.Equal(tok.Encode("[user]Hi[assistant]", addSpecialTokens: false).Ids, m["tokens"]!.AsArray().Select(x => x!.GetValue<int>()));
        var d = (await (await http.PostAsJsonAsync("/detokenize", new JsonObject { ["tokens"] = m["tokens"]!.DeepClone() })).Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.Equal("[user]Hi[assistant]", d["prompt"]!.GetValue<string>());
        var wrongModel = await http.PostAsJsonAsync("/tokenize", new JsonObject { ["model"] = "other", ["prompt"] = "x" });
        Assert.Equal(HttpStatusCode.NotFound, wrongModel.StatusCode);

        // Bad chat input: tool_choice without tools, tool-call arguments that are not JSON: 400s.
        var boom = await http.PostAsJsonAsync("/v1/chat/completions", new JsonObject { ["model"] = "tiny-llama", ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "x" }), ["tool_choice"] = "auto" });
        Assert.Equal(HttpStatusCode.BadRequest, boom.StatusCode); // tool_choice without tools
        var bad = await http.PostAsJsonAsync("/tokenize", new JsonObject { ["messages"] = new JsonArray(new JsonObject { ["role"] = "assistant", ["content"] = "x", ["tool_calls"] = new JsonArray(new JsonObject { ["id"] = "c", ["type"] = "function", ["function"] = new JsonObject { ["name"] = "f", ["arguments"] = "{not json" } }) }) });
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);

        // Without tools the reply is content; with tools a Llama-style JSON reply is a tool call.
        var plain = (await (await http.PostAsJsonAsync("/v1/chat/completions", new JsonObject { ["model"] = "tiny-llama", ["messages"] = messages.DeepClone() })).Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.Equal("plain answer", plain["choices"]![0]!["message"]!["content"]!.GetValue<string>());
        var tools = new JsonArray(new JsonObject { ["type"] = "function", ["function"] = new JsonObject { ["name"] = "add", ["parameters"] = new JsonObject { ["type"] = "object" } } });
        var call = (await (await http.PostAsJsonAsync("/v1/chat/completions", new JsonObject
        {
            ["model"] = "tiny-llama", ["messages"] = messages.DeepClone(), ["tools"] = tools.DeepClone(),
            ["tool_choice"] = new JsonObject { ["type"] = "function", ["function"] = new JsonObject { ["name"] = "add" } },
        })).Content.ReadFromJsonAsync<JsonObject>())!;
        var choice = call["choices"]![0]!;
        Assert.Equal("tool_calls", choice["finish_reason"]!.GetValue<string>());
        Assert.Null(choice["message"]!["content"]);
        var fn = choice["message"]!["tool_calls"]![0]!["function"]!;
        Assert.Equal("add", fn["name"]!.GetValue<string>());
        Assert.Equal("{\"a\":1,\"b\":2}", JsonNode.Parse(fn["arguments"]!.GetValue<string>())!.ToJsonString());
        // tool_choice "none": the same reply stays text.
        var none = (await (await http.PostAsJsonAsync("/v1/chat/completions", new JsonObject { ["model"] = "tiny-llama", ["messages"] = messages.DeepClone(), ["tools"] = tools.DeepClone(), ["tool_choice"] = "none" })).Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.Equal("stop", none["choices"]![0]!["finish_reason"]!.GetValue<string>());
        Assert.StartsWith("{\"name\": \"add\"", none["choices"]![0]!["message"]!["content"]!.GetValue<string>());
        // An unknown named function is refused.
        var unknown = await http.PostAsJsonAsync("/v1/chat/completions", new JsonObject
        {
            ["model"] = "tiny-llama", ["messages"] = messages.DeepClone(), ["tools"] = tools.DeepClone(),
            ["tool_choice"] = new JsonObject { ["type"] = "function", ["function"] = new JsonObject { ["name"] = "nope" } },
        });
        Assert.Equal(HttpStatusCode.BadRequest, unknown.StatusCode);
    }

    [Fact]
    public async Task A_template_that_raises_is_a_400_naming_the_template_and_line()
    {
        using var tmp = new TempDir();
        string folder = ServeTests.ModelWithTokenizer(tmp, chatTemplate: false);
        File.WriteAllText(tmp.File("chat_template.jinja"), "line one\n{% for m in messages %}\n{{ raise_exception('roles must alternate') if m.role == 'system' }}{% endfor %}");
        await using var cluster = await EmbeddedCluster.StartAsync(1, "node-1/cpu=1GiB");
        var (server, http) = await ServeTests.Serve(folder, cluster, injectedOutput: _ => "x");
        await using var _ = server;
        using var __ = http;
        var r = await http.PostAsJsonAsync("/v1/chat/completions", new JsonObject { ["model"] = "tiny-llama", ["messages"] = new JsonArray(new JsonObject { ["role"] = "system", ["content"] = "s" }) });
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        var error = (await r.Content.ReadFromJsonAsync<JsonObject>())!["error"]!;
        Assert.Equal("chat template 'chat_template.jinja' line 3: roles must alternate", error["message"]!.GetValue<string>());
        Assert.Equal("messages", error["param"]!.GetValue<string>());
    }
}
