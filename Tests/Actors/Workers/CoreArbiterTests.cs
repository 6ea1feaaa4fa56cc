using ShardPipe.Actors.Workers;

namespace ShardPipe.Tests.Actors.Workers;

/// <summary>How a process's cores are shared among the stages computing at once (<see cref="CoreArbiter"/>).</summary>
public class CoreArbiterTests
{
    [Theory]
    [InlineData(2, 1, 0, 2)]   // a stage computing alone gets every core
    [InlineData(2, 2, 0, 1)]   // two at once split them
    [InlineData(2, 3, 0, 1)]   // never below one thread
    [InlineData(16, 3, 0, 5)]  // an equal share, rounded down
    [InlineData(16, 1, 4, 4)]  // the node's own cap (compute-threads, its pinned cores)
    [InlineData(2, 1, 8, 2)]   // a cap above the cores does not add any
    [InlineData(1, 1, 0, 1)]
    public void Threads_are_an_equal_share_of_the_cores_within_the_nodes_cap(int cores, int computing, int limit, int expected) =>
        Assert.Equal(expected, CoreArbiter.Threads(cores, computing, limit));

    [Theory]
    [InlineData(0, 1, 0)]
    [InlineData(2, 0, 0)]
    [InlineData(2, 1, -1)]
    public void Threads_refuse_impossible_counts(int cores, int computing, int limit) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => CoreArbiter.Threads(cores, computing, limit));

    [Fact]
    public void Cores_must_be_at_least_one() =>
        Assert.Throws<InvalidInputException>(() => new CoreArbiter(0));

    [Fact]
    public void Leases_count_the_stages_computing_until_they_are_disposed()
    {
        var arbiter = new CoreArbiter(2);
        var first = arbiter.Enter();
        Assert.Equal(2, first.Threads);              // alone: both cores
        var second = arbiter.Enter();
        Assert.Equal(1, second.Threads);             // entered while the first computes: a share
        Assert.Equal(2, arbiter.Computing);
        first.Dispose();
        first.Dispose();                             // twice counts once
        Assert.Equal(1, arbiter.Computing);
        second.Dispose();
        Assert.Equal(0, arbiter.Computing);
        using var third = arbiter.Enter(limit: 1);
        Assert.Equal(1, third.Threads);              // alone again, within its node's cap
    }

    [Fact]
    public void A_leases_current_share_follows_the_stages_computing_now()
    {
        var arbiter = new CoreArbiter(2);
        var other = arbiter.Enter();
        var prefill = arbiter.Enter();
        Assert.Equal(1, prefill.Threads);            // started beside another stage's step
        other.Dispose();
        Assert.Equal(2, prefill.Current);            // that one ended: every core, from the next layer on
        using (var late = arbiter.Enter())
            Assert.Equal(1, prefill.Current);        // another started: back to a share
        var capped = arbiter.Enter(limit: 1);
        prefill.Dispose();
        Assert.Equal(1, capped.Current);             // alone, but within its node's cap
        capped.Dispose();
        Assert.Equal(1, capped.Current);             // after the step: what it started with
        Assert.Equal(0, arbiter.Computing);
    }

    [Fact]
    public void Leases_taken_and_returned_concurrently_leave_no_stage_counted()
    {
        var arbiter = new CoreArbiter(4);
        Parallel.For(0, 2000, new ParallelOptions { MaxDegreeOfParallelism = 4 }, _ =>
        {
            using var lease = arbiter.Enter();
            Assert.InRange(lease.Threads, 1, 4);
        });
        Assert.Equal(0, arbiter.Computing);
    }
}
