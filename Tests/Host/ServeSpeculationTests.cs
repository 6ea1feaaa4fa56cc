using System.Net.Http.Json;
using System.Text.Json.Nodes;
using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>
/// Speculative decoding from the command line and the HTTP server: <c>generate --speculate ngram</c> gives the plain
/// greedy tokens in one process and on 3 embedded nodes and reports its counts; <c>serve --speculate</c> answers with
/// the plain text and reports proposed/accepted tokens in usage; so do <c>--draft-model</c> runs, and a draft model of
/// another vocabulary is refused (exit 2) before anything is loaded.
/// </summary>
[Collection("cluster")]
public class ServeSpeculationTests
{
    [Fact]
    public async Task Generate_and_serve_with_ngram_speculation_give_the_plain_greedy_text_and_report_their_counts()
    {
        using var tmp = new TempDir();
        string folder = ServeTests.ModelWithTokenizer(tmp);
        const string prompt = "abcabcabcab";
        JsonNode Generate(params string[] extra)
        {
            var r = ShardPipeProcess.Run(new[] { "generate", "--model", folder, "--prompt", prompt, "--max-new-tokens", "24", "--greedy", "--ignore-eos", "--json" }.Concat(extra).ToArray());
            Assert.True(r.ExitCode == 0, r.Stderr);
            return JsonNode.Parse(r.Stdout)!;
        }
        var plain = Generate();
        var local = Generate("--speculate", "ngram");
        var onCluster = Generate("--speculate", "ngram", "--num-speculative-tokens", "3", "--cluster", "embedded:3");
        Assert.Equal(plain["sequences"]!.ToJsonString(), local["sequences"]!.ToJsonString());
        Assert.Equal(plain["sequences"]!.ToJsonString(), onCluster["sequences"]!.ToJsonString());
        Assert.Null(plain["speculation"]);
        foreach (var run in new[] { local, onCluster })
        {
            int proposed = run["speculation"]!["proposed_tokens"]!.GetValue<int>(), accepted = run["speculation"]!["accepted_tokens"]!.GetValue<int>();
            Assert.True(proposed > 0, run.ToJsonString());
            Assert.InRange(accepted, 0, proposed);
        }
        Assert.Equal(3, onCluster["speculation"]!["num_speculative_tokens"]!.GetValue<int>());

        var twoRows = ShardPipeProcess.Run("generate", "--model", folder, "--input-ids", "1,2,3;4,5,6", "--speculate", "ngram");
        Assert.Equal(2, twoRows.ExitCode);
        Assert.Contains("one row", twoRows.Stderr);

        // serve --speculate: the same text as plain generate, and usage counts the drafts.
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var (server, http) = await ServeTests.Serve(folder, cluster, adjust: s => s with { Speculate = new SpeculationSettings("ngram", 4) });
        await using var _ = server;
        using var __ = http;
        var body = new JsonObject { ["model"] = "tiny-llama", ["prompt"] = prompt, ["max_tokens"] = 24, ["temperature"] = 0, ["ignore_eos"] = true };
        var response = await http.PostAsJsonAsync("/v1/completions", body);
        var completion = (await response.Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.True(response.IsSuccessStatusCode, completion.ToJsonString());
        Assert.Equal(plain["text"]![0]!.GetValue<string>(), completion["choices"]![0]!["text"]!.GetValue<string>());
        var usage = completion["usage"]!;
        Assert.Equal(24, usage["completion_tokens"]!.GetValue<int>());
        Assert.True(usage["speculation"]!["proposed_tokens"]!.GetValue<int>() > 0, usage.ToJsonString());
        Assert.InRange(usage["speculation"]!["accepted_tokens"]!.GetValue<int>(), 0, usage["speculation"]!["proposed_tokens"]!.GetValue<int>());
    }

    [Fact]
    public async Task Generate_and_serve_with_a_draft_model_give_the_plain_greedy_text_and_a_mismatched_draft_exits_2()
    {
        using var tmp = new TempDir();
        string folder = ServeTests.ModelWithTokenizer(tmp);
        string draft = DraftFolders.Small(tmp);
        const string prompt = "the draft proposes, the target decides";
        JsonNode Generate(params string[] extra)
        {
            var r = ShardPipeProcess.Run(new[] { "generate", "--model", folder, "--prompt", prompt, "--max-new-tokens", "24", "--greedy", "--ignore-eos", "--json" }.Concat(extra).ToArray());
            Assert.True(r.ExitCode == 0, r.Stderr);
            return JsonNode.Parse(r.Stdout)!;
        }
        var plain = Generate();
        var local = Generate("--draft-model", draft);
        var onCluster = Generate("--draft-model", draft, "--num-speculative-tokens", "3", "--cluster", "embedded:3");
        var self = Generate("--speculate", "draft", "--draft-model", folder);
        foreach (var run in new[] { local, onCluster, self })
        {
            Assert.Equal(plain["sequences"]!.ToJsonString(), run["sequences"]!.ToJsonString());
            Assert.Equal("draft", run["speculation"]!["method"]!.GetValue<string>());
            int proposed = run["speculation"]!["proposed_tokens"]!.GetValue<int>(), accepted = run["speculation"]!["accepted_tokens"]!.GetValue<int>();
            Assert.True(proposed > 0, run.ToJsonString());
            Assert.InRange(accepted, 0, proposed);
        }
        Assert.Equal(1.0, self["speculation"]!["acceptance_rate"]!.GetValue<double>()); // the target as its own draft

        // A draft of another vocabulary, or named with prompt lookup: exit 2, naming what is at fault.
        var wide = ShardPipeProcess.Run("generate", "--model", folder, "--input-ids", "1,2,3", "--draft-model", DraftFolders.Small(tmp, 300, "wide"));
        Assert.Equal(2, wide.ExitCode);
        Assert.Contains("vocab_size 300", wide.Stderr);
        var both = ShardPipeProcess.Run("generate", "--model", folder, "--input-ids", "1,2,3", "--speculate", "ngram", "--draft-model", draft);
        Assert.Equal(2, both.ExitCode);
        Assert.Contains("--draft-model", both.Stderr);
        var serveWide = ShardPipeProcess.Run("serve", "--model", folder, "--port", "0", "--draft-model", Path.Combine(tmp.Path, "wide"));
        Assert.Equal(2, serveWide.ExitCode);
        Assert.Contains("vocab_size 300", serveWide.Stderr);

        // serve with a draft model: the plain text, and usage counts the drafts.
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var (server, http) = await ServeTests.Serve(folder, cluster, adjust: s => s with { Speculate = new SpeculationSettings("draft", 4, draft) });
        await using var _ = server;
        using var __ = http;
        var body = new JsonObject { ["model"] = "tiny-llama", ["prompt"] = prompt, ["max_tokens"] = 24, ["temperature"] = 0, ["ignore_eos"] = true };
        var response = await http.PostAsJsonAsync("/v1/completions", body);
        var completion = (await response.Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.True(response.IsSuccessStatusCode, completion.ToJsonString());
        Assert.Equal(plain["text"]![0]!.GetValue<string>(), completion["choices"]![0]!["text"]!.GetValue<string>());
        var usage = completion["usage"]!;
        Assert.True(usage["speculation"]!["proposed_tokens"]!.GetValue<int>() > 0, usage.ToJsonString());
        Assert.InRange(usage["speculation"]!["accepted_tokens"]!.GetValue<int>(), 0, usage["speculation"]!["proposed_tokens"]!.GetValue<int>());
    }
}
