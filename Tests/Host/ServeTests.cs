using ShardPipe.Actors.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging.Abstractions;
using ShardPipe.Actors.Hosting;
using ShardPipe.Host.Cli;
using ShardPipe.Host.Serving;
using ShardPipe.Modeling.Chat;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Tokenization;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>
/// <c>shardpipe serve</c>'s OpenAI API over real HTTP on an embedded 3-node cluster: completions, streamed and not,
/// equal <c>shardpipe generate</c> for the same greedy request; concurrent streams get their own tokens; stop strings,
/// bad bodies, unknown models, a full queue and a client that disconnects are answered as OpenAI's API does.
/// </summary>
[Collection("cluster")]
public class ServeTests
{
    internal const string ChatMl = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    /// <summary>
    /// A reference Llama (vocabulary 256) with a byte-level tokenizer over exactly those 256 ids (the one
    /// <c>shardpipe synth</c> writes) and, unless asked otherwise, a ChatML chat template.
    /// </summary>
    internal static string ModelWithTokenizer(TempDir tmp, bool chatTemplate = true)
    {
        foreach (var f in Directory.GetFiles(TestPaths.Model("llama_untied"))) File.Copy(f, tmp.File(Path.GetFileName(f)));
        ByteLevelTokenizerFile.Write(tmp.Path, 256);
        if (chatTemplate) File.WriteAllText(tmp.File("tokenizer_config.json"), new JsonObject { ["chat_template"] = ChatMl }.ToJsonString());
        return tmp.Path;
    }

    /// <summary>What <c>generate --prompt P --greedy --json</c> prints as text[0]: greedy in one process, new tokens decoded without special tokens.</summary>
    private static string Expected(string folder, long[] ids, int maxNew)
    {
        var model = PreTrainedModel.FromPretrained(folder);
        try
        {
            var r = TokenGenerator.Greedy(model, new[] { ids }, null, new GenerationOptions { MaxNewTokens = maxNew });
            return ModelTokenizer.Load(folder).Decode(r.Sequences[0].Skip(ids.Length), skipSpecialTokens: true);
        }
        finally { model.Release(); }
    }

    /// <summary>The ChatML template rendered with add_generation_prompt (what a chat request's prompt is).</summary>
    internal static string RenderChatMl(params (string Role, string Content)[] messages) =>
        ChatTemplates.Of(ChatMl).Apply(new ChatInput
        {
            Messages = messages.Select(m => (object?)new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList(),
            AddGenerationPrompt = true,
        }, new Dictionary<string, object?>());

    internal static async Task<(OpenAiServer Server, HttpClient Http)> Serve(string folder, EmbeddedCluster cluster, int maxActive = 16, int maxQueued = 64,
        Func<string, string>? injectedOutput = null, Func<ServeSettings, ServeSettings>? adjust = null)
    {
        var session = ClusterSession.Over(cluster);
        await session.EnsureLoadedAsync(ShardPipe.Tests.Actors.Requests.Load(folder), NullLogger.Instance, json: true);
        var settings = new ServeSettings
        {
            ModelId = "tiny-llama", ModelFolder = folder, Port = 0, MaxActive = maxActive, MaxQueued = maxQueued, RequestTimeout = TimeSpan.FromSeconds(120),
            InjectedOutput = injectedOutput,
        };
        if (adjust is not null) settings = adjust(settings);
        var server = await OpenAiServer.StartAsync(settings, session, NullLogger.Instance);
        // A response disposed before its end closes the connection at once, as a client that goes away does (by default
        // .NET's handler would first read on for up to 2 s to reuse the connection).
        var handler = new SocketsHttpHandler { ResponseDrainTimeout = TimeSpan.Zero, MaxResponseDrainSize = 0 };
        return (server, new HttpClient(handler) { BaseAddress = server.Address, Timeout = TimeSpan.FromSeconds(120) });
    }

    private static JsonObject Body(object prompt, int maxTokens, bool stream = false, string? extra = null)
    {
        var o = new JsonObject { ["model"] = "tiny-llama", ["prompt"] = JsonSerializerNode(prompt), ["max_tokens"] = maxTokens, ["temperature"] = 0, ["stream"] = stream };
        if (extra is not null) foreach (var (k, v) in JsonNode.Parse(extra)!.AsObject().ToList()) o[k] = v?.DeepClone();
        return o;
    }

    private static JsonNode? JsonSerializerNode(object value) => System.Text.Json.JsonSerializer.SerializeToNode(value);

    /// <summary>Reads a server-sent-event stream: the data of each event, up to and including [DONE].</summary>
    internal static async Task<List<string>> Events(HttpResponseMessage response)
    {
        var events = new List<string>();
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            events.Add(line[6..]);
            if (line == "data: [DONE]") break;
        }
        return events;
    }

    private static string Joined(IEnumerable<string> events) => string.Concat(events.Where(e => e != "[DONE]")
        .Select(e => JsonNode.Parse(e)!["choices"]!.AsArray().Select(c => c!["text"]!.GetValue<string>()).FirstOrDefault() ?? ""));

    [Fact]
    public async Task Completions_streamed_and_not_equal_generate_and_sixteen_streams_get_their_own_tokens()
    {
        using var tmp = new TempDir();
        string folder = ModelWithTokenizer(tmp);
        var tokenizer = ModelTokenizer.Load(folder);
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var (server, http) = await Serve(folder, cluster);
        await using var _ = server;
        using var __ = http;

        var models = await http.GetFromJsonAsync<JsonObject>("/v1/models");
        Assert.Equal("tiny-llama", models!["data"]![0]!["id"]!.GetValue<string>());
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/health")).StatusCode);

        // The text equals the generate CLI's for the same prompt and max_tokens.
        const string prompt = "Hello, cluster";
        var cli = ShardPipeProcess.Run("generate", "--model", folder, "--prompt", prompt, "--max-new-tokens", "12", "--greedy", "--json");
        Assert.True(cli.ExitCode == 0, cli.Stderr);
        string expected = JsonNode.Parse(cli.Stdout)!["text"]![0]!.GetValue<string>();
        var response = await http.PostAsJsonAsync("/v1/completions", Body(prompt, 12));
        var completion = (await response.Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.True(response.IsSuccessStatusCode, completion.ToJsonString());
        Assert.Equal(expected, completion["choices"]![0]!["text"]!.GetValue<string>());
        Assert.Equal("text_completion", completion["object"]!.GetValue<string>());
        int promptTokens = tokenizer.Encode(prompt).Ids.Length;
        Assert.Equal(promptTokens, completion["usage"]!["prompt_tokens"]!.GetValue<int>());
        Assert.Equal(promptTokens + completion["usage"]!["completion_tokens"]!.GetValue<int>(), completion["usage"]!["total_tokens"]!.GetValue<int>());

        // Streamed: the pieces join to exactly that text, then a finish reason, then [DONE].
        var stream = await http.SendAsync(new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(Body(prompt, 12, stream: true)) },
            HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", stream.Content.Headers.ContentType!.MediaType);
        var events = await Events(stream);
        Assert.Equal("[DONE]", events[^1]);
        Assert.Equal(expected, Joined(events));
        Assert.Contains(events, e => e != "[DONE]" && JsonNode.Parse(e)!["choices"]![0]!["finish_reason"] is JsonValue);

        // Token ids as the prompt; and a stop string cuts the text before it.
        var ids = tokenizer.Encode(prompt).Ids.Select(i => (long)i).ToArray();
        var byIds = (await (await http.PostAsJsonAsync("/v1/completions", Body(ids, 12))).Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.Equal(expected, byIds["choices"]![0]!["text"]!.GetValue<string>());
        Assert.True(expected.Length > 4, $"the greedy text '{expected}' is too short to hold a stop string after its start");
        string stop = expected.Substring(3, 2);
        var stopped = (await (await http.PostAsJsonAsync("/v1/completions", Body(prompt, 12, extra: $"{{\"stop\": [{System.Text.Json.JsonSerializer.Serialize(stop)}]}}"))).Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.Equal(expected[..expected.IndexOf(stop, StringComparison.Ordinal)], stopped["choices"]![0]!["text"]!.GetValue<string>());
        Assert.Equal("stop", stopped["choices"]![0]!["finish_reason"]!.GetValue<string>());

        // 16 concurrent streams, each with its own prompt, each with its own greedy text.
        var prompts = Enumerable.Range(0, 16).Select(i => $"prompt {i}: {(char)('a' + i)}{i * 7}").ToList();
        var expectedTexts = prompts.Select(p => Expected(folder, tokenizer.Encode(p).Ids.Select(x => (long)x).ToArray(), 10)).ToList();
        foreach (var node in cluster.Nodes) NodeDiagnostics.For(node.System).StepRows.Drain();
        var streams = await Task.WhenAll(prompts.Select(async p =>
        {
            var r = await http.SendAsync(new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(Body(p, 10, stream: true)) },
                HttpCompletionOption.ResponseHeadersRead);
            return Joined(await Events(r));
        }));
        Assert.Equal(expectedTexts, streams);
        Assert.True(expectedTexts.Distinct().Count() > 1, "the prompts should lead to different texts");
        // Continuous batching: the stages ran the concurrent requests' steps merged.
        var rows = cluster.Nodes.SelectMany(n => NodeDiagnostics.For(n.System).StepRows.Drain()).ToList();
        Assert.True(rows.Max() >= 8, $"the most rows in one step while 16 streams ran: {rows.Max()}");

        // Chat: the messages rendered with the chat template (add_generation_prompt) and run as generate --prompt runs it.
        var messages = new JsonArray(new JsonObject { ["role"] = "system", ["content"] = "Be brief." }, new JsonObject { ["role"] = "user", ["content"] = "Hi there" });
        string rendered = RenderChatMl(("system", "Be brief."), ("user", "Hi there"));
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", rendered);
        var chatCli = ShardPipeProcess.Run("generate", "--model", folder, "--prompt", rendered, "--max-new-tokens", "10", "--greedy", "--json");
        Assert.True(chatCli.ExitCode == 0, chatCli.Stderr);
        string chatExpected = JsonNode.Parse(chatCli.Stdout)!["text"]![0]!.GetValue<string>();
        var chatBody = new JsonObject { ["model"] = "tiny-llama", ["messages"] = messages, ["max_tokens"] = 10, ["temperature"] = 0 };
        var chat = (await (await http.PostAsJsonAsync("/v1/chat/completions", chatBody)).Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.Equal("chat.completion", chat["object"]!.GetValue<string>());
        Assert.Equal("assistant", chat["choices"]![0]!["message"]!["role"]!.GetValue<string>());
        Assert.Equal(chatExpected, chat["choices"]![0]!["message"]!["content"]!.GetValue<string>());
        chatBody["stream"] = true;
        var chatStream = await Events(await http.SendAsync(new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = JsonContent.Create(chatBody) },
            HttpCompletionOption.ResponseHeadersRead));
        Assert.Equal("[DONE]", chatStream[^1]);
        var deltas = chatStream.Where(e => e != "[DONE]").Select(e => JsonNode.Parse(e)!["choices"]![0]!).ToList();
        Assert.Equal("assistant", deltas[0]["delta"]!["role"]!.GetValue<string>());
        Assert.Equal(chatExpected, string.Concat(deltas.Select(d => d["delta"]!["content"]?.GetValue<string>() ?? "")));
        Assert.NotNull(deltas[^1]["finish_reason"]);

        // Bad bodies: 400 naming the field; an unknown model: 404.
        foreach (var (body, param) in new (string, string?)[]
        {
            ("{not json", null), ("[1,2]", null), ("{\"model\":\"tiny-llama\"}", "prompt"), ("{\"prompt\":\"x\"}", "model"),
            ("{\"model\":\"tiny-llama\",\"prompt\":\"x\",\"temperature\":5}", "temperature"),
            ("{\"model\":\"tiny-llama\",\"prompt\":\"x\",\"n\":2}", "n"),
            ("{\"model\":\"tiny-llama\",\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens"),
            ("{\"model\":\"tiny-llama\",\"prompt\":\"x\",\"max_tokens\":\"12\"}", "max_tokens"),
            ("{\"model\":\"tiny-llama\",\"prompt\":[1,-2]}", "prompt"),
            ("{\"model\":\"tiny-llama\",\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop"),
            ("chat:{\"model\":\"tiny-llama\",\"messages\":[]}", "messages"),
            ("chat:{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages"),
            ("chat:{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "messages"),
        })
        {
            bool isChat = body.StartsWith("chat:");
            var r = await http.PostAsync(isChat ? "/v1/chat/completions" : "/v1/completions", new StringContent(isChat ? body[5..] : body, Encoding.UTF8, "application/json"));
            var error = (await r.Content.ReadFromJsonAsync<JsonObject>())!["error"]!;
            Assert.True(r.StatusCode == HttpStatusCode.BadRequest, $"{body}: {r.StatusCode} {error.ToJsonString()}");
            Assert.Equal("invalid_request_error", error["type"]!.GetValue<string>());
            Assert.Equal(param, error["param"]?.GetValue<string>());
        }
        var unknown = await http.PostAsJsonAsync("/v1/completions", new JsonObject { ["model"] = "gpt-4", ["prompt"] = "x" });
        Assert.Equal(HttpStatusCode.NotFound, unknown.StatusCode);
        Assert.Equal("model_not_found", (await unknown.Content.ReadFromJsonAsync<JsonObject>())!["error"]!["code"]!.GetValue<string>());

        // Prometheus metrics: requests by outcome, tokens, latency histograms, bytes per device.
        string metrics = await http.GetStringAsync("/metrics");
        foreach (var expect in new[]
        {
            "shardpipe_requests_total{endpoint=\"completions\",outcome=\"ok\"}", "shardpipe_requests_total{endpoint=\"completions\",outcome=\"bad_request\"}",
            "shardpipe_requests_total{endpoint=\"completions\",outcome=\"not_found\"}", "shardpipe_requests_total{endpoint=\"chat_completions\",outcome=\"ok\"}",
            "shardpipe_completion_tokens_total", "shardpipe_prompt_tokens_total", "shardpipe_time_to_first_token_seconds_bucket",
            "shardpipe_inter_token_latency_seconds_bucket", "shardpipe_device_bytes{device=\"node-1/cpu\",kind=\"loaded\"}", "shardpipe_model_ready 1",
        })
            Assert.Contains(expect, metrics);
        double completionTokens = double.Parse(metrics.Split('\n').First(l => l.StartsWith("shardpipe_completion_tokens_total ")).Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(completionTokens >= 12 * 4 + 16 * 10, $"completion tokens counted: {completionTokens}");
        // Per-stage timing arrives with the workers' registrations (every second).
        await Eventually.True(async () => (await http.GetStringAsync("/metrics")).Contains("shardpipe_stage_step_ms{device=\"node-2/cpu\"}"), TimeSpan.FromSeconds(5), "stage step times in /metrics");
        Assert.Contains("shardpipe_hop_latency_ms{device=\"node-3/cpu\"}", await http.GetStringAsync("/metrics"));
        Assert.Contains("shardpipe_rows_per_step{device=\"node-1/cpu\"}", await http.GetStringAsync("/metrics"));
    }

    [Fact]
    public async Task A_full_queue_answers_429_and_a_client_that_disconnects_cancels_its_request_on_every_stage()
    {
        using var tmp = new TempDir();
        string folder = ModelWithTokenizer(tmp, chatTemplate: false);
        // Every step sleeps a little, so that a 200-token stream is still running while the test acts.
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB", extraConfig: _ => "shardpipe.debug.step-delay = 20ms");
        var (server, http) = await Serve(folder, cluster, maxActive: 1, maxQueued: 0);
        await using var _ = server;
        using var __ = http;

        using var abort = new CancellationTokenSource();
        var first = await http.SendAsync(new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = JsonContent.Create(Body("a long one", 200, stream: true, extra: "{\"temperature\": 0}")),
        }, HttpCompletionOption.ResponseHeadersRead, abort.Token);
        var reader = new StreamReader(await first.Content.ReadAsStreamAsync(abort.Token));
        Assert.StartsWith("data: ", await reader.ReadLineAsync(abort.Token)); // tokens are flowing
        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(1, status.InFlight);

        // The one slot is taken and no queue is allowed: 429 with Retry-After, in OpenAI's error shape.
        var busy = await http.PostAsJsonAsync("/v1/completions", Body("x", 2));
        Assert.Equal((HttpStatusCode)429, busy.StatusCode);
        Assert.NotNull(busy.Headers.RetryAfter);
        Assert.Equal("rate_limit_error", (await busy.Content.ReadFromJsonAsync<JsonObject>())!["error"]!["type"]!.GetValue<string>());

        // The client goes away mid-stream: within a second no stage runs a step of its request any more (every step
        // sleeps 20 ms, so a running request would add a dozen steps in 300 ms), and nothing of it is left in the cluster.
        long Steps() => cluster.Nodes.Sum(n => NodeDiagnostics.For(n.System).StepTimes.Count);
        long before = Steps();
        abort.Cancel();
        reader.Dispose();
        first.Dispose();
        await Task.Delay(1000);
        long atOneSecond = Steps();
        Assert.True(atOneSecond > before, "the request was running until the client went");
        await Task.Delay(300);
        Assert.Equal(atOneSecond, Steps());
        await Eventually.True(async () => (await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5))).InFlight == 0, TimeSpan.FromSeconds(5), "the request was cancelled in the cluster");
        // The slot is free again.
        var again = await http.PostAsJsonAsync("/v1/completions", Body("x", 2));
        Assert.Equal(HttpStatusCode.OK, again.StatusCode);
        // A model without a chat template: chat requests are a 400 that says so.
        var noTemplate = await http.PostAsJsonAsync("/v1/chat/completions", new JsonObject { ["model"] = "tiny-llama", ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "x" }) });
        Assert.Equal(HttpStatusCode.BadRequest, noTemplate.StatusCode);
        Assert.Contains("no chat template", (await noTemplate.Content.ReadFromJsonAsync<JsonObject>())!["error"]!["message"]!.GetValue<string>());
    }
}
