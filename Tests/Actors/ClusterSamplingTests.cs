using ShardPipe.Actors.Hosting;
using ShardPipe.Messages;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>The sampler runs at a cluster's last stage: repetition penalty and seeded sampling give one process's tokens.</summary>
[Collection("cluster")]
public class ClusterSamplingTests
{
    private static readonly long[][] Prompt = { new long[] { 5, 6, 7, 5, 6 } };

    [Fact]
    public async Task Repetition_penalty_and_seeded_sampling_give_the_same_tokens_in_process_and_on_a_cluster()
    {
        string folder = TestPaths.Model("llama_untied");
        var model = PreTrainedModel.FromPretrained(folder);
        long[] Local(GenerationOptions o) => TokenGenerator.Greedy(model, Prompt, null, o with { MaxNewTokens = 8 }).Sequences[0][Prompt[0].Length..];
        var penalised = Local(new GenerationOptions { RepetitionPenalty = 1.8 });
        var sampled = Local(new GenerationOptions { DoSample = true, Temperature = 0.8, TopK = 20, TopP = 0.9, Seed = 7 });
        Assert.NotEqual(Local(new GenerationOptions()), penalised); // the penalty changes this prompt's tokens

        await using var cluster = await EmbeddedCluster.StartAsync(2, "node-1/cpu=1GiB,node-2/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(folder), TimeSpan.FromMinutes(1));
        async Task<long[]> OnCluster(SamplingSettings s) =>
            (await cluster.Client.RunAsync(new Generate(Guid.NewGuid().ToString("N"), Prompt, null, 8, false, s), loaded.Stages, TimeSpan.FromSeconds(30))).NewTokens[0];
        Assert.Equal(penalised, await OnCluster(new SamplingSettings(true, 0, 0, 1, 0, RepetitionPenalty: 1.8)));
        Assert.Equal(sampled, await OnCluster(new SamplingSettings(false, 0.8, 20, 0.9, 7)));
    }
}
