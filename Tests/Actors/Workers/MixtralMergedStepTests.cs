using ShardPipe.Actors.Coordination;
using ShardPipe.Actors.Workers;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Support;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Actors.Workers;

/// <summary>
/// Mixtral's merged steps: 8 concurrent requests through one Mixtral stage read each expert's weights at most once per
/// step (counted by the experts themselves), fewer reads than run one by one, and each request gets its tokens run alone.
/// </summary>
public class MixtralMergedStepTests
{
    private static readonly SamplingSettings Greedy = new(true, 0, 0, 1, 0);

    private static StageInput First(string id, long[] prompt, int maxNew)
    {
        var ids = new[] { prompt };
        var mask = DecodeRule.FullMask(ids);
        var chunk = ChunkedPrefill.First(ids, mask, DecodeRule.PositionsFromMask(mask), 0);
        var state = new GenerationState(maxNew, true, new long[] { 255 }, 0, new bool[1], Greedy, null, ShardPipe.Actors.Transport.PromptRestWire.ToWire(chunk.Rest));
        return new StageInput(id, 0, 0, null, chunk.Ids, chunk.Mask, chunk.Positions, "caller", state, 0, null);
    }

    /// <summary>Runs the requests through one stage holding the whole model, every waiting step merged; the number of steps taken and each request's tokens.</summary>
    private static (int Steps, Dictionary<string, List<long>> Tokens) Run(CausalLMModel model, IReadOnlyList<(string Id, long[] Prompt, int MaxNew)> requests)
    {
        using var runner = new StageRunner(model, new[] { new PipelineHop("self", true, 0, model.NumLayers, true, true) });
        var tokens = requests.ToDictionary(r => r.Id, _ => new List<long>());
        var waiting = requests.Select(r => First(r.Id, r.Prompt, r.MaxNew)).ToList();
        var done = new HashSet<string>();
        int steps = 0;
        while (done.Count < requests.Count)
        {
            Assert.True(steps < 200, "the requests did not finish");
            var now = waiting.ToList();
            waiting.Clear();
            steps++;
            foreach (var o in runner.Run(now))
                switch (o.Message)
                {
                    case StageInput next: waiting.Add(next); break;
                    case TokensGenerated t: tokens[t.RequestId].AddRange(t.Tokens); break;
                    case GenerationDone d when o.Path == "caller": done.Add(d.RequestId); break;
                    case ReleaseRequest rel: runner.Release(rel.RequestId); break;
                }
        }
        return (steps, tokens);
    }

    private static List<MixtralSparseMoeBlock> Blocks(CausalLMModel model) => model.NamedModules().Select(m => m.Module).OfType<MixtralSparseMoeBlock>().ToList();
    private static long Reads(IEnumerable<MixtralSparseMoeBlock> blocks) => blocks.Sum(b => b.Experts.Sum(e => e.Runs));

    [Theory]
    [InlineData("float32")]
    [InlineData("bfloat16")] // decode steps of up to 8 rows take the bf16 kernels
    public void Eight_concurrent_requests_read_each_expert_once_per_step_and_get_their_tokens_run_alone(string dtype)
    {
        var r = ReferenceData.Family("mixtral");
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = dtype });
        var blocks = Blocks(model);
        Assert.Equal(model.NumLayers, blocks.Count);
        var requests = Enumerable.Range(0, 8)
            .Select(i => ($"r{i}", Enumerable.Range(0, 3 + i).Select(j => (long)((j * 37 + i * 11 + 3) % 250 + 2)).ToArray(), 6 + i))
            .ToList();

        var alone = new Dictionary<string, List<long>>();
        long aloneReads = Reads(blocks), aloneCalls = blocks.Sum(b => b.Calls);
        foreach (var q in requests) alone[q.Item1] = Run(model, new[] { q }).Tokens[q.Item1];
        aloneReads = Reads(blocks) - aloneReads;
        aloneCalls = blocks.Sum(b => b.Calls) - aloneCalls;

        long readsBefore = Reads(blocks);
        var callsBefore = blocks.Select(b => b.Calls).ToArray();
        var runsBefore = blocks.Select(b => b.Experts.Select(e => e.Runs).ToArray()).ToArray();
        var (steps, merged) = Run(model, requests);
        long mergedReads = Reads(blocks) - readsBefore;

        foreach (var q in requests) Assert.Equal(alone[q.Item1], merged[q.Item1]);
        for (int l = 0; l < blocks.Count; l++)
        {
            long calls = blocks[l].Calls - callsBefore[l];
            Assert.Equal(steps, calls); // one call of the block per merged step, whatever the number of requests in it
            for (int e = 0; e < blocks[l].Experts.Count; e++)
                Assert.True(blocks[l].Experts[e].Runs - runsBefore[l][e] <= calls, $"layer {l} expert {e}: read {blocks[l].Experts[e].Runs - runsBefore[l][e]} times in {calls} steps");
        }
        Assert.Equal(1, blocks.Max(b => b.MostRunsInOneCall));
        Assert.True(mergedReads < aloneReads, $"merged: {mergedReads} expert reads; one by one: {aloneReads}");
        Assert.True(steps < aloneCalls / blocks.Count, $"{steps} merged steps vs {aloneCalls / blocks.Count} alone");
    }

    [Fact]
    public void A_decode_row_reads_only_its_top_k_experts()
    {
        var r = ReferenceData.Family("mixtral_sliding"); // 3 experts, top-1
        var model = PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { DType = "float32" });
        var block = Blocks(model)[0];
        long before = block.Experts.Sum(e => e.Runs);
        using var scope = NewDisposeScope();
        using var y = block.Forward(randn(1, model.Config.GetLong("hidden_size")));
        Assert.Equal(1, block.Experts.Sum(e => e.Runs) - before);

        var big = Blocks(PreTrainedModel.FromPretrained(ReferenceData.Family("mixtral").Folder, new FromPretrainedOptions { DType = "float32" }))[0];
        before = big.Experts.Sum(e => e.Runs);
        using var y2 = big.Forward(randn(1, 64));
        Assert.Equal(2, big.Experts.Sum(e => e.Runs) - before); // top-2 of 4
    }
}
