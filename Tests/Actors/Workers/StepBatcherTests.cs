using ShardPipe.Actors.Settings;
using ShardPipe.Actors.Workers;
using ShardPipe.Messages;

namespace ShardPipe.Tests.Actors.Workers;

/// <summary>Which waiting steps a stage runs together (continuous batching), without a stage.</summary>
public class StepBatcherTests
{
    private static readonly DateTime T0 = new(2026, 1, 1, 0, 0, 0, DateTimeKind.Utc);

    private static StepBatcher Batcher(int maxRows = 32, int maxTokens = 512, int microBatches = 1, int holdMs = 500) =>
        new(new BatchingSettings(maxRows, maxTokens, microBatches, TimeSpan.FromMilliseconds(holdMs)));

    private static StageInput Step(string id, int hop = 0, int rows = 1, int tokens = 1, bool generation = true, int epoch = 0)
    {
        var ids = Enumerable.Range(0, rows).Select(_ => new long[tokens]).ToArray();
        var state = generation ? new GenerationState(8, false, new long[] { 2 }, 0, new bool[rows], new SamplingSettings(true, 0, 0, 1, 0)) : null;
        return new StageInput(id, 0, hop, hop == 0 ? null : new TensorPayload("F32", new long[] { rows, tokens, 4 }, new byte[rows * tokens * 16]),
            hop == 0 ? ids : null, ids, ids, "caller", state, epoch, null);
    }

    private static string[] Ids(IEnumerable<StageInput> steps) => steps.Select(s => s.RequestId).ToArray();

    [Fact]
    public void Steps_of_one_hop_run_together_in_arrival_order_and_other_hops_wait_their_turn()
    {
        var b = Batcher();
        b.Add(Step("a", hop: 1), T0);
        b.Add(Step("x", hop: 2), T0);
        b.Add(Step("b", hop: 1), T0);
        Assert.Equal(new[] { "a", "b" }, Ids(b.Take(T0)));
        Assert.Equal(new[] { "x" }, Ids(b.Take(T0)));
        Assert.Empty(b.Take(T0));
    }

    [Fact]
    public void A_forward_pass_runs_alone_and_other_epochs_do_not_merge()
    {
        var b = Batcher();
        b.Add(Step("f", hop: 1, generation: false), T0);
        b.Add(Step("g", hop: 1), T0);
        b.Add(Step("h", hop: 1, generation: false), T0);
        b.Add(Step("old", hop: 1, epoch: 7), T0);
        Assert.Equal(new[] { "f" }, Ids(b.Take(T0)));
        Assert.Equal(new[] { "g" }, Ids(b.Take(T0)));
        Assert.Equal(new[] { "h" }, Ids(b.Take(T0)));
        Assert.Equal(new[] { "old" }, Ids(b.Take(T0)));
    }

    [Fact]
    public void Rows_and_positions_are_capped_but_the_first_step_always_runs()
    {
        var b = Batcher(maxRows: 4, maxTokens: 20);
        b.Add(Step("long", hop: 1, tokens: 50), T0);  // over the position cap: alone
        b.Add(Step("two", hop: 1, rows: 2, tokens: 2), T0);
        b.Add(Step("three", hop: 1, rows: 3), T0);    // 2 + 3 rows > 4
        b.Add(Step("one", hop: 1), T0);
        b.Add(Step("chunk", hop: 1, tokens: 16), T0); // 4 rows would fit, 4 + 1 + 16 positions would not
        Assert.Equal(new[] { "long" }, Ids(b.Take(T0)));
        Assert.Equal(new[] { "two", "one" }, Ids(b.Take(T0)));
        Assert.Equal(new[] { "three", "chunk" }, Ids(b.Take(T0)));
    }

    [Fact]
    public void A_new_request_waits_at_the_first_hop_for_the_group_in_flight_and_joins_it_between_steps()
    {
        var b = Batcher();
        b.Add(Step("a"), T0);
        Assert.Equal(new[] { "a" }, Ids(b.Take(T0)));      // nothing out: starts at once
        Assert.Equal(1, b.GroupsOut);
        b.Add(Step("new"), T0.AddMilliseconds(5));
        Assert.Empty(b.Take(T0.AddMilliseconds(5)));       // "a" is out: "new" waits for it
        Assert.Equal(T0.AddMilliseconds(500), b.NextDeadline(T0.AddMilliseconds(5)));
        b.Add(Step("a"), T0.AddMilliseconds(30));          // "a" comes back for its next step
        Assert.Equal(new[] { "new", "a" }, Ids(b.Take(T0.AddMilliseconds(30))));
        Assert.Equal(1, b.GroupsOut);
    }

    [Fact]
    public void A_group_member_that_ends_no_longer_holds_new_requests()
    {
        var b = Batcher();
        b.Add(Step("a"), T0);
        b.Add(Step("b"), T0);
        Assert.Equal(2, b.Take(T0).Count);
        b.Add(Step("new"), T0);
        b.Add(Step("a"), T0.AddMilliseconds(10));
        Assert.Equal(new[] { "new", "a" }, Ids(b.Take(T0.AddMilliseconds(10)))); // "a" leads; "new" rides along
        b.Add(Step("late"), T0.AddMilliseconds(11));
        Assert.Empty(b.Take(T0.AddMilliseconds(11)));
        b.Released("new");
        b.Released("a");                                    // the group {new, a} ended; "b"'s old group ended too:
        b.Released("b");
        Assert.Equal(new[] { "late" }, Ids(b.Take(T0.AddMilliseconds(12))));
    }

    [Fact]
    public void A_held_request_starts_alone_after_the_hold_limit_and_a_lost_group_is_forgotten()
    {
        var b = Batcher(holdMs: 100);
        b.Add(Step("a"), T0);
        b.Take(T0);
        b.Add(Step("new"), T0.AddMilliseconds(50));
        Assert.Empty(b.Take(T0.AddMilliseconds(60)));
        Assert.Equal(T0.AddMilliseconds(100), b.NextDeadline(T0.AddMilliseconds(60))); // "a"'s group expires first
        Assert.Equal(new[] { "new" }, Ids(b.Take(T0.AddMilliseconds(101))));
    }

    [Fact]
    public void More_micro_batches_let_a_new_request_start_its_own_group()
    {
        var b = Batcher(microBatches: 2);
        b.Add(Step("a"), T0);
        b.Take(T0);
        b.Add(Step("b"), T0);
        Assert.Equal(new[] { "b" }, Ids(b.Take(T0)));
        b.Add(Step("c"), T0);
        Assert.Empty(b.Take(T0));
        Assert.Equal(2, b.GroupsOut);
    }

    [Fact]
    public void Prompts_arriving_while_only_prompts_are_out_start_at_once_and_the_groups_merge_when_they_come_back()
    {
        var b = Batcher();
        b.Add(Step("p1", tokens: 30), T0);
        Assert.Equal(new[] { "p1" }, Ids(b.Take(T0)));                          // nothing out: starts at once
        b.Add(Step("p2", tokens: 29), T0.AddMilliseconds(5));
        b.Add(Step("p3", tokens: 31), T0.AddMilliseconds(6));
        Assert.Equal(new[] { "p2", "p3" }, Ids(b.Take(T0.AddMilliseconds(6)))); // only prompts are out: they do not wait
        Assert.Equal(2, b.GroupsOut);
        b.Add(Step("p1"), T0.AddMilliseconds(40));                              // p1 decodes: it waits for {p2, p3}
        Assert.Empty(b.Take(T0.AddMilliseconds(40)));
        Assert.NotNull(b.NextDeadline(T0.AddMilliseconds(40)));
        b.Add(Step("p2"), T0.AddMilliseconds(90));
        b.Add(Step("p3"), T0.AddMilliseconds(90));
        Assert.Equal(new[] { "p1", "p2", "p3" }, Ids(b.Take(T0.AddMilliseconds(90)))); // one step again
        Assert.Equal(1, b.GroupsOut);
        b.Add(Step("late", tokens: 30), T0.AddMilliseconds(95));
        Assert.Empty(b.Take(T0.AddMilliseconds(95)));                           // a decoding group is out: the prompt joins it
    }

    [Fact]
    public void A_group_waiting_for_another_runs_alone_after_the_hold_limit()
    {
        var b = Batcher(holdMs: 100);
        b.Add(Step("p1", tokens: 30), T0);
        b.Take(T0);
        b.Add(Step("p2", tokens: 30), T0.AddMilliseconds(1));
        b.Take(T0.AddMilliseconds(1));
        b.Add(Step("p1"), T0.AddMilliseconds(20));
        Assert.Empty(b.Take(T0.AddMilliseconds(50)));
        Assert.Equal(new[] { "p1" }, Ids(b.Take(T0.AddMilliseconds(121))));   // p2 never came back in time
    }

    [Fact]
    public void A_released_request_leaves_the_queue()
    {
        var b = Batcher();
        b.Add(Step("a", hop: 1), T0);
        b.Add(Step("b", hop: 1), T0);
        b.Released("a");
        Assert.Equal(new[] { "b" }, Ids(b.Take(T0)));
        Assert.Equal(0, b.Pending);
    }

    [Fact]
    public void Bad_settings_are_refused()
    {
        Assert.Throws<ArgumentException>(() => Batcher(maxRows: 0));
        Assert.Throws<ArgumentException>(() => Batcher(microBatches: 0));
    }
}
