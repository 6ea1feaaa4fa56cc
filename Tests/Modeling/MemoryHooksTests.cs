using ShardPipe.Modeling.Core;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary><c>add_memory_hooks</c> / <c>reset_memory_hooks_state</c>: RSS around each module's forward, summed, resettable.</summary>
public class MemoryHooksTests
{
    private static readonly long[] Prompt = { 5, 17, 42, 9, 3 };

    private static void Forward(CausalLMModel model)
    {
        using var scope = NewDisposeScope();
        model.Forward(tensor(Prompt, new long[] { 1, Prompt.Length }));
    }

    private static Dictionary<string, MemoryHookState> States(CausalLMModel model) =>
        model.MemoryHooksState().ToDictionary(s => s.Path, s => s.State);

    /// <summary>
    /// Modules whose forward runs: all but containers (as in HF) and the rotary embedding (its tables are made once per
    /// pass for every layer, outside any module).
    /// </summary>
    private static bool Runs(string path, string className) =>
        className != "ModuleList" && !className.EndsWith("RotaryEmbedding", StringComparison.Ordinal);

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama_tied")]
    public void Every_module_that_runs_records_its_rss_before_and_after_and_the_difference(string name)
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model(name));
        model.AddMemoryHooks();
        var hooked = model.MemoryHooksState();
        Assert.Equal(model.NamedModules().Select(m => m.Path), hooked.Select(h => h.Path));
        Assert.All(hooked, h => Assert.Equal((0L, 0L, 0L), (h.State.MemRssPreForward, h.State.MemRssPostForward, h.State.MemRssDiff)));

        Forward(model);
        foreach (var (path, className, s) in model.MemoryHooksState())
        {
            if (Runs(path, className))
            {
                Assert.True(s.MemRssPreForward > 0 && s.MemRssPostForward > 0, $"{path} ({className}) recorded nothing");
                Assert.Equal(s.MemRssPostForward - s.MemRssPreForward, s.MemRssDiff);
            }
            else Assert.Equal((0L, 0L, 0L), (s.MemRssPreForward, s.MemRssPostForward, s.MemRssDiff));
        }
        Assert.Contains(hooked, h => Runs(h.Path, h.ClassName) && h.ClassName is "Conv1D" or "Linear");
    }

    [Theory]
    [InlineData("mixtral")]
    [InlineData("gemma")]
    [InlineData("phi")]
    public void The_families_decoder_layers_attention_and_feed_forward_record(string family)
    {
        var model = PreTrainedModel.FromPretrained(Path.Combine(TestPaths.Families, family));
        model.AddMemoryHooks();
        Forward(model);
        var recorded = model.MemoryHooksState().Where(h => h.State.MemRssPostForward > 0).Select(h => h.Path).ToHashSet();
        for (int i = 0; i < model.NumLayers; i++)
        {
            Assert.Contains($"model.layers.{i}", recorded);
            Assert.Contains($"model.layers.{i}.self_attn", recorded);
            Assert.Contains(family == "mixtral" ? $"model.layers.{i}.block_sparse_moe" : $"model.layers.{i}.mlp", recorded);
        }
        if (family == "mixtral") Assert.Contains(recorded, p => p.Contains(".block_sparse_moe.experts."));
    }

    [Fact]
    public void Differences_accumulate_over_forwards_until_reset()
    {
        var model = PreTrainedModel.FromPretrained(TestPaths.Model("gpt2"));
        model.AddMemoryHooks();
        Forward(model);
        var first = States(model).ToDictionary(kv => kv.Key, kv => kv.Value.MemRssDiff);
        Forward(model);
        foreach (var (path, s) in States(model).Where(kv => kv.Value.MemRssPreForward > 0))
            Assert.Equal(first[path] + (s.MemRssPostForward - s.MemRssPreForward), s.MemRssDiff);

        model.ResetMemoryHooksState();
        Assert.All(States(model).Values, s => Assert.Equal((0L, 0L, 0L), (s.MemRssPreForward, s.MemRssPostForward, s.MemRssDiff)));
        Forward(model);
        Assert.True(States(model)["transformer.h.1.mlp"].MemRssPostForward > 0); // still hooked after a reset

        model.RemoveMemoryHooks();
        Assert.Empty(model.MemoryHooksState());
        Forward(model);
    }
}

/// <summary>The process's RSS, which the memory hooks read, follows the memory it touches. RSS is the whole process's, and
/// other threads give memory back while it is read: a test class running beside this one (a full-suite run: "RSS grew by
/// 42545152 bytes for 128 MiB"), and, run last and alone, the runtime returning the regions a collection freed and the
/// finalizers freeing earlier tests' tensors (101154816 and 100728832 bytes: about 32 MB given back meanwhile). So this
/// runs alone, after the collector and finalizers settle, and takes the largest growth of three fresh 128 MiB buffers:
/// RSS that did not follow touched memory would miss in all three.</summary>
[Collection(ProcessRssCollection.Name)]
public class ProcessRssTests
{
    [Fact]
    public void Rss_follows_the_memory_the_process_touches()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        Thread.Sleep(200);
        long best = 0;
        for (int attempt = 0; attempt < 3 && best < 100L << 20; attempt++)
        {
            long before = ProcessMemory.Rss();
            using var big = ones(32L << 20, ScalarType.Float32); // 128 MiB, written
            best = Math.Max(best, ProcessMemory.Rss() - before);
        }
        Assert.True(best >= 100L << 20, $"RSS grew by at most {best} bytes for 128 MiB (3 tries)");
    }
}

/// <summary>Tests that read the process's RSS: run with no other test class in parallel.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public class ProcessRssCollection
{
    public const string Name = "process RSS";
}
