using ShardPipe.Actors.Membership;

namespace ShardPipe.Tests.Actors;

/// <summary>When the coordinator's node is downed at once (fast failover) and when a coordinator may decide (quorum), without a cluster.</summary>
public class CoordinatorFailoverTests
{
    private static MemberView M(string address, bool reachable = true, bool coordinator = true) => new(address, coordinator, reachable);

    [Fact]
    public void The_successor_downs_the_coordinators_node_when_it_is_the_only_member_lost_and_the_rest_are_a_majority()
    {
        var members = new[] { M("n1", reachable: false), M("n2"), M("n3") };
        Assert.Equal("n1", CoordinatorFailover.NodeToDown(members, "n2"));
        Assert.Null(CoordinatorFailover.NodeToDown(members, "n3")); // one node decides: the next oldest
        Assert.Null(CoordinatorFailover.NodeToDown(members, "n1"));
    }

    [Fact]
    public void Anything_but_the_clear_cut_case_is_left_to_the_split_brain_resolver()
    {
        // A worker lost, not the coordinator's node.
        Assert.Null(CoordinatorFailover.NodeToDown(new[] { M("n1"), M("n2", reachable: false), M("n3") }, "n1"));
        // Two members lost (this side is a minority, or the view is not settled).
        Assert.Null(CoordinatorFailover.NodeToDown(new[] { M("n1", reachable: false), M("n2"), M("n3", reachable: false) }, "n2"));
        Assert.Null(CoordinatorFailover.NodeToDown(new[] { M("n1", reachable: false), M("n2"), M("n3"), M("n4", reachable: false), M("n5") }, "n2"));
        // Two nodes: one of two is no majority (keep-majority's tie-break decides, after stable-after).
        Assert.Null(CoordinatorFailover.NodeToDown(new[] { M("n1", reachable: false), M("n2") }, "n2"));
        // Four nodes, the coordinator's lost: three of four is a majority.
        Assert.Equal("n1", CoordinatorFailover.NodeToDown(new[] { M("n1", reachable: false), M("n2"), M("n3"), M("n4") }, "n2"));
    }

    [Fact]
    public void The_coordinator_is_the_oldest_member_with_the_role_and_its_successor_the_next_one_reachable()
    {
        // n1 is the oldest but only a worker: the singleton runs on n2; n3 succeeds it.
        var members = new[] { M("n1", coordinator: false), M("n2", reachable: false), M("n3"), M("n4") };
        Assert.Equal("n2", CoordinatorFailover.NodeToDown(members, "n3"));
        Assert.Null(CoordinatorFailover.NodeToDown(members, "n1"));
        Assert.Null(CoordinatorFailover.NodeToDown(members, "n4"));
    }

    [Fact]
    public void A_side_holds_the_quorum_with_a_strict_majority_or_half_with_the_lowest_address()
    {
        Assert.True(CoordinatorFailover.HasQuorum(new[] { M("n1"), M("n2", reachable: false), M("n3") }, "n1"));
        Assert.False(CoordinatorFailover.HasQuorum(new[] { M("n1"), M("n2", reachable: false), M("n3", reachable: false) }, "n1"));
        Assert.True(CoordinatorFailover.HasQuorum(new[] { M("n1"), M("n2", reachable: false) }, "n1"));
        Assert.False(CoordinatorFailover.HasQuorum(new[] { M("n1", reachable: false), M("n2") }, "n1"));
        Assert.True(CoordinatorFailover.HasQuorum(new[] { M("n1") }, "n1"));
        // The two sides of any cut: never both.
        var left = new[] { M("n1"), M("n2"), M("n3", reachable: false), M("n4", reachable: false) };
        var right = new[] { M("n1", reachable: false), M("n2", reachable: false), M("n3"), M("n4") };
        Assert.True(CoordinatorFailover.HasQuorum(left, "n1"));
        Assert.False(CoordinatorFailover.HasQuorum(right, "n1"));
    }
}
