using System.IO.Hashing;
using Akka.Actor;
using Akka.Configuration;
using ShardPipe.Actors.Diagnostics;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Workers;
using ShardPipe.Messages;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Actors.Security;

/// <summary>
/// The side doors into a stage: a link (a socket whose frames go straight into the stage's queue) is offered only to
/// the stage that sends there in the current route, a link offer is taken only from the stage it names, and chunked
/// messages are reassembled only for members — a stranger gets no token and no memory held.
/// </summary>
[Collection("cluster")]
public sealed class StageIntakeTests
{
    private static readonly long[][] Prompt = { new long[] { 5, 17, 42, 9, 3 } };

    private static PipelineHop Hop(string node, bool embed = false, bool head = false) =>
        new($"akka.tcp://shardpipe@127.0.0.1:{node}/user/device-0", embed, 0, 1, head, head);

    private static ActorPath PathOf(string node) => ActorPath.Parse($"akka.tcp://shardpipe@127.0.0.1:{node}/user/device-0");

    [Fact]
    public void A_link_is_for_the_stage_that_sends_there_and_an_offer_only_from_the_stage_it_names()
    {
        var route = new[] { Hop("4001", embed: true), Hop("4002"), Hop("4003", head: true) };
        Assert.True(LinkIntake.SendsTo(route, PathOf("4001"), PathOf("4002")));
        Assert.True(LinkIntake.SendsTo(route, PathOf("4002"), PathOf("4003")));
        Assert.True(LinkIntake.SendsTo(route, PathOf("4003"), PathOf("4001"))); // the next token loops back to the first hop
        Assert.False(LinkIntake.SendsTo(route, PathOf("4001"), PathOf("4003")));
        Assert.False(LinkIntake.SendsTo(route, PathOf("4003"), PathOf("4002")));
        Assert.False(LinkIntake.SendsTo(route, PathOf("4999"), PathOf("4002")));
        Assert.False(LinkIntake.SendsTo(route, ActorPath.Parse("akka.tcp://shardpipe@127.0.0.1:4001/user/device-1"), PathOf("4002")));
        Assert.True(LinkIntake.IsOfferFrom(route[2].WorkerPath, PathOf("4003")));
        Assert.False(LinkIntake.IsOfferFrom(route[2].WorkerPath, PathOf("4002")));
        Assert.False(LinkIntake.IsOfferFrom("not a path", PathOf("4002")));
    }

    [Fact]
    public async Task A_stranger_gets_no_link_token_and_no_memory_for_chunks_and_the_cluster_serves_as_before()
    {
        await using var cluster = await EmbeddedCluster.StartAsync(3, "node-1/cpu=1GiB,node-2/cpu=1GiB,node-3/cpu=1GiB");
        var loaded = await cluster.Client.LoadAsync(Requests.Load(TestPaths.Model("llama_untied")), TimeSpan.FromMinutes(1));
        var before = await cluster.Client.RunAsync(Requests.Generate(Prompt, null, 12) with { IgnoreEos = true }, loaded.Stages, TimeSpan.FromSeconds(30));

        using var stranger = ActorSystem.Create("shardpipe", ReferenceConfig.Over(ConfigurationFactory.ParseString(
            "akka.actor.provider = remote\nakka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }\nakka.loglevel = OFF")));
        var probe = new Akka.TestKit.Xunit2.TestKit(stranger);
        var stage2 = loaded.Stages.First(s => s.Device.StartsWith("node-2/"));
        var worker2 = ((ExtendedActorSystem)stranger).Provider.ResolveActorRef(stage2.WorkerPath);
        var diagnostics = NodeDiagnostics.For(cluster.Nodes[1].System);
        long refusedBefore = diagnostics.RefusedByIntake;

        // A link request: refused, no token.
        worker2.Tell(new OpenLink(stage2.WorkerPath), probe.TestActor);
        var offer = probe.ExpectMsg<LinkOffer>(TimeSpan.FromSeconds(10));
        Assert.Contains("not a member", offer.Refused);
        Assert.Empty(offer.Token);
        Assert.Equal(0, offer.Port);

        // A transfer of 10,000 chunks of 64 KiB that never finishes: none of it is held.
        var data = new byte[64 << 10];
        new Random(1).NextBytes(data);
        uint crc = Crc32.HashToUInt32(data);
        const int sent = 40;
        for (int i = 0; i < sent; i++) worker2.Tell(new MessageChunk("t-never", i, 10_000, "stages", crc, data), probe.TestActor);
        await Eventually.True(() => diagnostics.RefusedByIntake >= refusedBefore + 1 + sent, TimeSpan.FromSeconds(20), "every chunk refused by intake");

        var status = await cluster.Client.StatusAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(loaded.PlanEpoch, status.PlanEpoch);
        var after = await cluster.Client.RunAsync(Requests.Generate(Prompt, null, 12) with { IgnoreEos = true }, status.Stages, TimeSpan.FromSeconds(30));
        Assert.Equal(before.NewTokens, after.NewTokens);
        // The stages still talk over their links (offered to each other, not to the stranger).
        await Eventually.True(() => cluster.Nodes.Sum(n => NodeDiagnostics.For(n.System).LinksUp) >= 2, TimeSpan.FromSeconds(20), "the stages' own links up");
        await stranger.Terminate();
    }
}
