using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using ShardPipe.Actors.Client;
using ShardPipe.Actors.Settings;
using ShardPipe.Messages;
using Xunit;

namespace ShardPipe.Tests.Actors;

/// <summary>
/// How a request counts the faults it recovers from (<see cref="RequestOutcome.RecoveredFaults"/>, max-recoveries), against
/// a coordinator played by a probe: a resumed attempt turned back (retryable) before it delivered anything is the same
/// fault still being recovered — the cluster was not quite serving yet — and keeps that fault's deadline; one turned back
/// after it delivered tokens is a new fault. (A 3-node crash test once counted 2 faults for one kill: a stage still taking
/// up its new layers turned the resumed attempt back.)
/// </summary>
public class RequestRecoveryCountTests : TestKit
{
    private static ClientSettings Settings(TimeSpan recoveryTimeout) =>
        new("127.0.0.1", 3, recoveryTimeout, TimeSpan.FromMilliseconds(20), TimeSpan.FromSeconds(1), TimeSpan.FromMilliseconds(100));

    private (TaskCompletionSource<RequestOutcome> Done, TestProbe Coordinator) Start(TimeSpan recoveryTimeout, TimeSpan? stallTimeout = null)
    {
        var coordinator = CreateTestProbe();
        var done = new TaskCompletionSource<RequestOutcome>(TaskCreationOptions.RunContinuationsAsynchronously);
        var request = new Generate("r", new[] { new long[] { 1, 2, 3 } }, null, 3, true, new SamplingSettings(true, 0, 0, 1, 0));
        Sys.ActorOf(Props.Create(typeof(RequestActor), coordinator.Ref, request, Array.Empty<StageInfo>(), stallTimeout ?? TimeSpan.FromSeconds(20), null, done, Settings(recoveryTimeout)));
        coordinator.ExpectMsg<Generate>(g => g.RequestId == "r");
        return (done, coordinator);
    }

    /// <summary>The coordinator's answer to a status poll: the model is served.</summary>
    private static ClusterStatus Ready(GetStatus poll) => new(poll.RequestId, ClusterState.Ready, "m", Array.Empty<string>(), Array.Empty<DeviceUsage>(),
        Array.Empty<StageInfo>(), Array.Empty<DeviceMapEntry>());

    /// <summary>Answers the recovering request's status polls with "ready" and returns the attempt it resumes with.</summary>
    private static Generate Resume(TestProbe coordinator)
    {
        coordinator.Reply(Ready(coordinator.ExpectMsg<GetStatus>()));
        return (Generate)coordinator.FishForMessage(m => m is Generate, TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task A_resumed_attempt_turned_back_before_it_delivered_anything_is_the_same_fault()
    {
        var (done, coordinator) = Start(TimeSpan.FromSeconds(10));
        var actor = coordinator.LastSender;
        actor.Tell(new TokensGenerated("r", 0, new long[] { 10 }));
        actor.Tell(new RequestFailed("r", "node-2/cpu", "the model is being recovered", Retryable: true));
        var first = Resume(coordinator);
        Assert.Single(first.Resume!); // the delivered token travels with the resumed attempt
        actor.Tell(new RequestFailed(first.RequestId, "node-1/cpu", "no model slice is loaded on this stage", Retryable: true));
        var second = Resume(coordinator);
        Assert.NotEqual(first.RequestId, second.RequestId); // late messages of the turned-back attempt are dropped
        actor.Tell(new TokensGenerated(first.RequestId, 1, new long[] { 99 }));
        actor.Tell(new TokensGenerated(second.RequestId, 1, new long[] { 11 }));
        actor.Tell(new TokensGenerated(second.RequestId, 2, new long[] { 12 }));
        actor.Tell(new GenerationDone(second.RequestId, 3));
        var outcome = await done.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(new long[] { 10, 11, 12 }, outcome.NewTokens[0]);
        Assert.Equal(1, outcome.RecoveredFaults);
    }

    [Fact]
    public async Task A_resumed_attempt_interrupted_after_it_delivered_tokens_is_a_second_fault()
    {
        var (done, coordinator) = Start(TimeSpan.FromSeconds(10));
        var actor = coordinator.LastSender;
        actor.Tell(new TokensGenerated("r", 0, new long[] { 10 }));
        actor.Tell(new RequestFailed("r", "node-2/cpu", "the model is being recovered", Retryable: true));
        var first = Resume(coordinator);
        actor.Tell(new TokensGenerated(first.RequestId, 1, new long[] { 11 }));
        actor.Tell(new RequestFailed(first.RequestId, "node-3/cpu", "the model is being recovered", Retryable: true));
        var second = Resume(coordinator);
        Assert.Equal(2, second.Resume!.Length);
        actor.Tell(new TokensGenerated(second.RequestId, 2, new long[] { 12 }));
        actor.Tell(new GenerationDone(second.RequestId, 3));
        var outcome = await done.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(new long[] { 10, 11, 12 }, outcome.NewTokens[0]);
        Assert.Equal(2, outcome.RecoveredFaults);
    }

    [Fact]
    public async Task A_fault_after_the_last_token_came_ends_the_request_with_its_tokens_without_a_resume()
    {
        var (done, coordinator) = Start(TimeSpan.FromSeconds(10));
        var actor = coordinator.LastSender;
        for (int step = 0; step < 3; step++) actor.Tell(new TokensGenerated("r", step, new long[] { 10 + step }));
        // layers move (a drain) after the third and last step, before the pipeline's GenerationDone
        actor.Tell(new RequestFailed("r", "coordinator", "layers are moving; resume once it serves", Retryable: true));
        var outcome = await done.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(new long[] { 10, 11, 12 }, outcome.NewTokens[0]);
        Assert.Equal(1, outcome.RecoveredFaults);
        coordinator.ExpectNoMsg(TimeSpan.FromMilliseconds(300)); // no status poll, no resumed attempt
    }

    [Fact]
    public async Task Attempts_turned_back_again_and_again_end_at_the_first_faults_recovery_deadline()
    {
        var deadline = TimeSpan.FromSeconds(2);
        var (done, coordinator) = Start(deadline);
        var actor = coordinator.LastSender;
        var started = DateTime.UtcNow;
        actor.Tell(new RequestFailed("r", "node-2/cpu", "the model is being recovered", Retryable: true));
        // The coordinator says "ready" to every poll and every resumed attempt is turned back before it delivers anything,
        // until the request ends (or 10 s pass, which would mean the deadline restarted with each attempt).
        int turnedBack = 0;
        while (!done.Task.IsCompleted && DateTime.UtcNow - started < TimeSpan.FromSeconds(10))
        {
            var message = coordinator.ReceiveOne(TimeSpan.FromMilliseconds(200)); // null when nothing came
            if (message is GetStatus poll) coordinator.Reply(Ready(poll));
            else if (message is Generate attempt)
            {
                turnedBack++;
                actor.Tell(new RequestFailed(attempt.RequestId, "node-1/cpu", "no model slice is loaded on this stage", Retryable: true));
            }
        }
        var error = await Assert.ThrowsAsync<ClusterException>(() => done.Task.WaitAsync(TimeSpan.FromSeconds(5)));
        // More turned-back attempts than max-recoveries (3), none counted as a fault of its own: the request ends at the
        // first fault's recovery deadline, not at max-recoveries, and not later.
        Assert.True(turnedBack > 3, $"only {turnedBack} attempts were turned back before the request ended");
        Assert.Contains("shardpipe.client.recovery-timeout", error.Message);
        Assert.DoesNotContain("max-recoveries", error.Message);
        Assert.InRange((DateTime.UtcNow - started).TotalSeconds, 0.9 * deadline.TotalSeconds, deadline.TotalSeconds + 5);
    }

    [Fact]
    public async Task A_stalled_request_times_out_though_association_events_of_other_nodes_keep_arriving()
    {
        // Association events recur while anything in the client's system retries a departed node's address; every request
        // hears them (the event stream). They are not the request's progress: its stall timer runs on.
        var (done, coordinator) = Start(TimeSpan.FromSeconds(10), stallTimeout: TimeSpan.FromSeconds(1));
        var actor = coordinator.LastSender;
        actor.Tell(new TokensGenerated("r", 0, new long[] { 10 }));
        var lastProgress = DateTime.UtcNow;
        var gone = new Address("akka.tcp", "shardpipe", "10.0.0.9", 4053);
        var local = new Address("akka.tcp", "shardpipe", "127.0.0.1", 4052);
        while (!done.Task.IsCompleted && DateTime.UtcNow - lastProgress < TimeSpan.FromSeconds(5))
        {
            Sys.EventStream.Publish(new Akka.Remote.DisassociatedEvent(local, gone, inbound: false));
            actor.Tell(new TokensGenerated("r~9", 1, new long[] { 99 })); // a late message of no current attempt
            await Task.Delay(100);
        }
        var error = await Assert.ThrowsAsync<ClusterException>(() => done.Task.WaitAsync(TimeSpan.FromSeconds(1)));
        Assert.Contains("made no progress for 1 s after 1 step(s)", error.Message);
        Assert.InRange((DateTime.UtcNow - lastProgress).TotalSeconds, 0.9, 3);
    }
}
