using ShardPipe.Actors.Coordination;
using ShardPipe.Messages;

namespace ShardPipe.Tests.Actors.Coordination;

/// <summary>Admission without an actor: limits, the bounded queue, callers that go away, recovery and unload.</summary>
public class AdmissionQueueTests
{
    private static readonly DateTime Now = new(2026, 1, 1, 0, 0, 0, DateTimeKind.Utc);
    private static AdmissionQueue<string, string> Queue(int maxInFlight = 2, int maxQueued = 1) => new(maxInFlight, maxQueued);

    [Theory]
    [InlineData(ClusterState.Starting, Admission.Starting)]
    [InlineData(ClusterState.Empty, Admission.NoModel)]
    [InlineData(ClusterState.Loading, Admission.NoModel)]
    [InlineData(ClusterState.Failed, Admission.NoModel)]
    [InlineData(ClusterState.Stopping, Admission.NoModel)]
    [InlineData(ClusterState.Recovering, Admission.Recovering)]
    [InlineData(ClusterState.Degraded, Admission.Recovering)]
    [InlineData(ClusterState.Ready, Admission.Start)]
    public void Only_a_ready_model_admits(ClusterState state, Admission expected)
    {
        var q = Queue();
        Assert.Equal(expected, q.Admit("r", "r", "c", state, Now));
        Assert.Equal(expected == Admission.Start ? 1 : 0, q.InFlight);
    }

    [Fact]
    public void Starts_up_to_the_limit_queues_one_more_refuses_the_rest_and_dequeues_in_order()
    {
        var q = Queue(maxInFlight: 2, maxQueued: 1);
        Assert.Equal(Admission.Start, q.Admit("r1", "r1", "c1", ClusterState.Ready, Now));
        Assert.Equal(Admission.Start, q.Admit("r2", "r2", "c2", ClusterState.Ready, Now));
        Assert.Equal(Admission.Queue, q.Admit("r3", "r3", "c3", ClusterState.Ready, Now));
        Assert.Equal(Admission.Busy, q.Admit("r4", "r4", "c4", ClusterState.Ready, Now));
        Assert.Empty(q.Finish("unknown", ClusterState.Ready, Now).Next);
        var (idle, next) = q.Finish("r1", ClusterState.Ready, Now);
        Assert.Equal("c1", idle);
        Assert.Equal(("r3", "r3", "c3"), Assert.Single(next));
        Assert.Equal(2, q.InFlight);
    }

    [Fact]
    public void A_second_request_under_a_running_or_queued_id_is_refused_and_keeps_nothing()
    {
        var q = Queue(maxInFlight: 1, maxQueued: 2);
        Assert.Equal(Admission.Start, q.Admit("r1", "r1", "c1", ClusterState.Ready, Now));
        Assert.Equal(Admission.Duplicate, q.Admit("r1", "again", "c2", ClusterState.Ready, Now));
        Assert.Equal(Admission.Queue, q.Admit("r2", "r2", "c1", ClusterState.Ready, Now));
        Assert.Equal(Admission.Duplicate, q.Admit("r2", "again", "c2", ClusterState.Ready, Now));
        Assert.Equal((1, 1), (q.InFlight, q.Queued));
        // The refused duplicate took no slot: finishing r1 starts r2 as queued.
        Assert.Equal(("r2", "r2", "c1"), Assert.Single(q.Finish("r1", ClusterState.Ready, Now).Next));
        // An id may be used again once its request ended.
        q.Finish("r2", ClusterState.Ready, Now);
        Assert.Equal(Admission.Start, q.Admit("r1", "r1", "c3", ClusterState.Ready, Now));
    }

    [Fact]
    public void A_caller_is_idle_only_when_none_of_its_requests_remain()
    {
        var q = Queue(maxInFlight: 1, maxQueued: 2);
        q.Admit("r1", "r1", "c", ClusterState.Ready, Now);
        q.Admit("r2", "r2", "c", ClusterState.Ready, Now);
        var (idle, next) = q.Finish("r1", ClusterState.Ready, Now);
        Assert.Null(idle); // r2 of the same caller starts now
        Assert.Equal("r2", Assert.Single(next).Id);
        Assert.Equal("c", q.Finish("r2", ClusterState.Ready, Now).IdleCaller);
    }

    [Fact]
    public void A_caller_that_goes_away_cancels_what_runs_and_withdraws_what_waits_keeping_the_rest_in_order()
    {
        var q = Queue(maxInFlight: 1, maxQueued: 3);
        q.Admit("r1", "r1", "gone", ClusterState.Ready, Now);
        q.Admit("q1", "q1", "other", ClusterState.Ready, Now);
        q.Admit("q2", "q2", "gone", ClusterState.Ready, Now);
        q.Admit("q3", "q3", "other", ClusterState.Ready, Now);
        var (running, withdrawn) = q.CallerGone("gone");
        Assert.Equal(new[] { "r1" }, running);
        Assert.Equal(new[] { "q2" }, withdrawn);
        Assert.Equal(2, q.Queued);
        Assert.Equal("q1", Assert.Single(q.Finish("r1", ClusterState.Ready, Now).Next).Id);
        Assert.Equal("q3", Assert.Single(q.Finish("q1", ClusterState.Ready, Now).Next).Id);
    }

    [Fact]
    public void A_recovery_interrupts_what_runs_queued_requests_wait_for_ready_and_an_unload_drops_everything()
    {
        var q = Queue(maxInFlight: 1, maxQueued: 2);
        q.Admit("r1", "r1", "c1", ClusterState.Ready, Now);
        q.Admit("q1", "q1", "c2", ClusterState.Ready, Now);
        Assert.Equal(new[] { ("r1", "c1") }, q.Interrupt());
        Assert.Equal(0, q.InFlight);
        Assert.Empty(q.Drain(ClusterState.Recovering, Now));
        Assert.Equal("q1", Assert.Single(q.Drain(ClusterState.Ready, Now)).Id);
        q.Admit("q2", "q2", "c3", ClusterState.Ready, Now);
        Assert.Equal(new[] { ("q2", "c3") }, q.Clear());
        Assert.Equal((0, 0), (q.InFlight, q.Queued));
    }
}
