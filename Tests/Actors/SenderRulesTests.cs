using Akka.Actor;
using Akka.Configuration;
using ShardPipe.Actors.Hosting;
using ShardPipe.Actors.Membership;

namespace ShardPipe.Tests.Actors;

/// <summary>The intake rules on one node that has joined no cluster: local actors are trusted, strangers are not.</summary>
public sealed class SenderRulesTests : IDisposable
{
    private readonly ActorSystem _system = ActorSystem.Create("shardpipe", ConfigurationFactory.ParseString(
        "akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }").WithFallback(ShardPipeNode.Reference));

    public void Dispose() => _system.Terminate().Wait(TimeSpan.FromSeconds(10));

    private IActorRef Remote(string path) => ((ExtendedActorSystem)_system).Provider.ResolveActorRef("akka.tcp://shardpipe@127.0.0.1:1" + path);

    [Fact]
    public void A_local_actor_is_trusted_with_every_role_and_its_node_is_this_one()
    {
        var local = _system.ActorOf(Props.Empty, "local");
        Assert.True(SenderRules.IsMemberWithRole(_system, local, Roles.Worker));
        Assert.True(SenderRules.IsMemberWithRole(_system, local, Roles.Coordinator));
        Assert.Equal(Akka.Cluster.Cluster.Get(_system).SelfAddress, SenderRules.NodeOf(_system, local));
        Assert.False(SenderRules.IsCoordinator(_system, local)); // not at the singleton's path
    }

    [Fact]
    public void A_stranger_is_no_member_not_the_coordinator_even_at_its_path_and_cannot_register()
    {
        var stranger = Remote("/user/coordinator/coordinator");
        Assert.False(SenderRules.IsMemberWithRole(_system, stranger, Roles.Worker));
        Assert.False(SenderRules.IsCoordinator(_system, stranger));
        Assert.Equal(Address.Parse("akka.tcp://shardpipe@127.0.0.1:1"), SenderRules.NodeOf(_system, stranger));
        Assert.Contains("is not a worker member", SenderRules.RegistrationProblem(_system, stranger, new[] { stranger.Path.ToString() }));
    }

    [Fact]
    public void A_registration_names_actors_of_the_senders_own_node_only()
    {
        var local = _system.ActorOf(Props.Empty, "device-0");
        string own = Akka.Serialization.Serialization.SerializedActorPath(local);
        Assert.Null(SenderRules.RegistrationProblem(_system, local, new[] { own }));
        Assert.Contains("names an actor on", SenderRules.RegistrationProblem(_system, local, new[] { "akka.tcp://shardpipe@10.0.0.9:4053/user/device-0" }));
        Assert.Contains("is not an actor path", SenderRules.RegistrationProblem(_system, local, new[] { "not a path" }));
    }
}
