using ShardPipe.Host.Bench;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Akka.Configuration;
using ShardPipe.Actors.Client;
using ShardPipe.Actors.Hosting;
using ShardPipe.Tests.Modeling;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors;

/// <summary>Three <c>shardpipe node</c> OS processes on loopback; this process joins as a client.</summary>
[Collection("cluster")]
public sealed class MultiProcessClusterTests : IAsyncLifetime
{
    private NodeProcesses _nodes = null!;

    // node-3 has no local copy of the checkpoints: it streams its slice.
    public Task InitializeAsync()
    {
        _nodes = new NodeProcesses(3, i => $"shardpipe {{ devices = [ {{ device = cpu, budget = \"1GiB\" }} ], local-checkpoints = {(i == 3 ? "off" : "on")} }}");
        return Task.CompletedTask;
    }

    public Task DisposeAsync()
    {
        _nodes.Dispose();
        return Task.CompletedTask;
    }

    [Fact]
    public async Task Three_node_processes_load_and_run_reference_models_like_hugging_face()
    {
        await using var api = ShardPipeClient.Connect(ContactPoints.Parse(_nodes.Contacts));
        {
            await api.WaitForNodesAsync(3, TimeSpan.FromSeconds(90));
            foreach (var name in new[] { "llama_tied", "mistral_window", "gpt2" })
            {
                var r = new ReferenceData(name);
                var loaded = await api.LoadAsync(Requests.Load(r.Folder, r.Variant), TimeSpan.FromMinutes(2));
                Assert.Equal(3, loaded.DeviceMap.Select(e => e.Device.Split('/')[0]).Distinct().Count());
                Assert.Contains(loaded.Devices, d => d.Streamed); // node-3 has no local copy
                var fwd = r.ForwardCases.First(c => c["name"]!.GetValue<string>() == "batch2_left_padded");
                var ids = ReferenceData.Ints(fwd["input_ids"]);
                var outcome = await api.RunAsync(Requests.Forward(ids, ReferenceData.Ints(fwd["attention_mask"]), null), loaded.Stages, TimeSpan.FromSeconds(30));
                var expected = ReferenceData.Doubles(fwd["last_logits"]!);
                for (int b = 0; b < ids.Length; b++) ReferenceModelTests.AssertClose(expected[b], outcome.LastLogits![b], 1e-4, $"{name} row {b} across processes");
                var gen = r.GenerateCases.Last();
                var gids = ReferenceData.Ints(gen["input_ids"]);
                var gmask = gen["attention_mask"] is JsonArray ? ReferenceData.Ints(gen["attention_mask"]) : null;
                var g = await api.RunAsync(Requests.Generate(gids, gmask, gen["generation_kwargs"]!["max_new_tokens"]!.GetValue<int>()), loaded.Stages, TimeSpan.FromSeconds(30));
                Assert.Equal(ReferenceData.Ints(gen["sequences"]), gids.Select((row, b) => row.Concat(g.NewTokens[b]).ToArray()).ToArray());
            }
        }
    }
}
