using System.Text.Json.Nodes;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Host;

/// <summary>The real <c>shardpipe forward --memory-hooks</c>: every module's RSS figures, as JSON or a table.</summary>
public class ForwardMemoryHooksCliTests
{
    [Fact]
    public void Forward_with_memory_hooks_reports_every_module()
    {
        var r = ShardPipeProcess.Run("forward", "--model", TestPaths.PrunedGpt2, "--input-ids", "169,209,183,164,63,205,11", "--memory-hooks", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = JsonNode.Parse(Assert.Single(r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries)))!;
        var reference = new ReferenceData("gpt2_pruned", TestPaths.PrunedGpt2);
        Assert.Equal(reference.ForwardCases.First()["argmax"]![0]!.GetValue<long>(), json["argmax"]![0]!.GetValue<long>());
        var hooks = ((JsonArray)json["memory_hooks"]!).Select(h => h!).ToList();
        Assert.Equal(("", "GPT2LMHeadModel"), (hooks[0]["module"]!.GetValue<string>(), hooks[0]["class"]!.GetValue<string>()));
        var byModule = hooks.ToDictionary(h => h["module"]!.GetValue<string>());
        foreach (var m in new[] { "", "transformer", "transformer.wte", "transformer.h.0.attn.c_attn", "transformer.h.1.mlp", "transformer.ln_f", "lm_head" })
        {
            var h = byModule[m];
            Assert.True(h["mem_rss_pre_forward"]!.GetValue<long>() > 0, m);
            Assert.Equal(h["mem_rss_post_forward"]!.GetValue<long>() - h["mem_rss_pre_forward"]!.GetValue<long>(), h["mem_rss_diff"]!.GetValue<long>());
        }
        Assert.True(byModule["transformer.drop"]["mem_rss_pre_forward"]!.GetValue<long>() > 0); // dropout: the identity, but it runs
        Assert.Equal(0, byModule["transformer.h"]["mem_rss_pre_forward"]!.GetValue<long>()); // a container never runs a forward

        var text = ShardPipeProcess.Run("forward", "--model", TestPaths.Model("gpt2"), "--input-ids", "5,6,7", "--memory-hooks");
        Assert.True(text.ExitCode == 0, text.Stderr);
        Assert.Contains("memory hooks", text.Stdout);
        Assert.Matches(@"(?m)^module\s+class\s+mem_rss_pre_forward\s+mem_rss_post_forward\s+mem_rss_diff$", text.Stdout);
        Assert.Matches(@"(?m)^transformer\.h\.0\.attn\.c_attn\s+Conv1D\s+[1-9]\d*\s+[1-9]\d*\s+-?\d+$", text.Stdout);
    }

    [Fact]
    public void Memory_hooks_on_a_cluster_are_refused()
    {
        var r = ShardPipeProcess.Run("forward", "--model", TestPaths.Model("gpt2"), "--input-ids", "5,6,7", "--memory-hooks", "--cluster", "embedded:3");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("error: --memory-hooks", Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)));
    }
}
