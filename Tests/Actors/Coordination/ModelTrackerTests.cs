using ShardPipe.Actors.Coordination;
using ShardPipe.Messages;

namespace ShardPipe.Tests.Actors.Coordination;

/// <summary>
/// The coordinator's model decisions without an actor: what a new coordinator adopts, a load's slices, what a loss
/// means (fail the load, recover, nothing), recovery and degradation, and which plan facts are current.
/// </summary>
public class ModelTrackerTests
{
    internal static ModelRecord Model(int epoch, params string[] stagePaths) => new(
        new LoadModel("id", "m", null, null, "auto", null, null), "m", epoch, Array.Empty<PipelineHop>(), Array.Empty<DeviceMapEntry>(),
        new[] { new DeviceUsage("node-1/cpu", 10, 0, 100), new DeviceUsage("node-2/cpu", 20, 0, 100) },
        stagePaths.Select(p => new StageInfo("?", p)).ToArray(), new long[] { 2 }, 0, 32, 2048, 0, Array.Empty<DeviceMapEntry>());

    private static HeldSlice Held(int epoch, ModelRecord? record = null) => new(epoch, "m", new[] { "model" }, 1, record);

    /// <summary>A tracker serving <paramref name="stages"/> at epoch 1.</summary>
    private static ModelTracker Serving(params string[] stages)
    {
        var t = new ModelTracker();
        t.Adopt(_ => true);
        int epoch = t.BeginPlan();
        t.BeginLoad(stages.ToDictionary(s => s, _ => 10L), Model(epoch, stages));
        foreach (var s in stages) t.SliceLoaded(s, new SliceLoaded(epoch, s, 10, 1, false), _ => null);
        Assert.Equal(ClusterState.Ready, t.State);
        return t;
    }

    [Fact]
    public void A_new_coordinator_adopts_the_newest_model_reported_releases_older_slices_and_names_missing_stages()
    {
        var t = new ModelTracker();
        Assert.Equal(ClusterState.Starting, t.State);
        var record = Model(4, "a", "b", "c");
        t.Report("n1", "a", Held(4, record));
        t.Report("n2", "b", Held(4, record));
        t.Report("n2", "old", Held(3));
        t.Report("n3", "gone", Held(2)); // no longer registered: nothing to tell it
        Assert.False(t.AllReported(new[] { "n1", "n2", "n4" }));
        Assert.True(t.AllReported(new[] { "n1", "n2" }));
        Assert.False(t.AllReported(Array.Empty<string>())); // no membership seen yet: the start window decides
        var adoption = t.Adopt(p => p != "gone");
        Assert.Same(record, adoption.Model);
        Assert.Equal(new[] { "c" }, adoption.Missing);
        Assert.Equal(new[] { ("old", 3) }, adoption.Release);
        Assert.Equal(new[] { "a", "b" }, t.Holders.Order());
        Assert.Equal(4, t.Epoch);
        Assert.Equal(5, t.BeginRecovery(DateTime.UtcNow)); // later epochs continue from the newest seen
        Assert.Equal(ClusterState.Recovering, t.State);
    }

    [Fact]
    public void A_new_coordinator_that_hears_of_no_model_is_empty()
    {
        var t = new ModelTracker();
        t.Report("n1", "a", Held(7)); // a slice never committed
        var adoption = t.Adopt(_ => true);
        Assert.Null(adoption.Model);
        Assert.Equal(new[] { ("a", 7) }, adoption.Release);
        Assert.Equal(ClusterState.Empty, t.State);
        Assert.Equal(8, t.BeginPlan());
    }

    [Fact]
    public void A_coordinator_that_died_mid_recovery_leaves_the_last_committed_model_to_the_next_with_epochs_above_every_one_sent()
    {
        // Epoch 4 served on a, b, c; c was lost and the last coordinator sent epoch 5 (a recovery) and died before
        // committing it: a holds its epoch-5 slice, b is still loading it, and both keep the epoch-4 record.
        var t = new ModelTracker();
        var record = Model(4, "a", "b", "c");
        t.Report("n1", "a", Held(5), served: record, seenEpoch: 5);
        t.Report("n2", "b", held: null, served: record, seenEpoch: 6); // a plan of epoch 6 reached b alone
        t.Report("n3", "old", Held(3), seenEpoch: 3);
        var adoption = t.Adopt(_ => true);
        Assert.Same(record, adoption.Model);
        Assert.Equal(new[] { "a", "b", "c" }, adoption.Missing.Order()); // nobody holds epoch 4 any more: all re-planned
        Assert.Equal(new[] { ("old", 3) }, adoption.Release); // the later epoch-5 slice stays, for the recovery to take over
        Assert.Empty(t.Holders);
        Assert.Equal(7, t.BeginRecovery(DateTime.UtcNow)); // never an epoch a dead coordinator already planned
        // While that recovery runs, a's kept epoch-5 slice is not released by its next registration (the recovery takes
        // it over); an older one is, and so is a record older than the model served.
        Assert.False(t.Unused(Held(5)));
        Assert.True(t.Unused(Held(5) with { Model = "other" })); // another model's slice: released
        Assert.True(t.Unused(Held(3)));
        Assert.False(t.StaleRecord(record));
        Assert.True(t.StaleRecord(Model(3, "a")));
    }

    [Fact]
    public void Later_slices_are_released_at_adoption_when_no_recovery_will_take_them_over()
    {
        // A move to epoch 5 reached d alone before its coordinator died: every stage of epoch 4 still holds its slice, so
        // the model is served as it was and d's uncommitted slice is freed (nothing else would ever free it).
        var t = new ModelTracker();
        var record = Model(4, "a", "b");
        t.Report("n1", "a", Held(4, record));
        t.Report("n2", "b", Held(4, record));
        t.Report("n3", "d", Held(5), served: record, seenEpoch: 5);
        var adoption = t.Adopt(_ => true);
        Assert.Same(record, adoption.Model);
        Assert.Empty(adoption.Missing);
        Assert.Equal(new[] { ("d", 5) }, adoption.Release);
        Assert.Equal(ClusterState.Ready, t.State);
        Assert.Equal(6, t.BeginPlan()); // and the next plan is above the dead coordinator's
    }

    [Fact]
    public void A_workers_latest_report_replaces_its_earlier_one()
    {
        var t = new ModelTracker();
        var record = Model(4, "a");
        t.Report("n1", "a", Held(4, record));
        t.Report("n1", "a", held: null, served: null, seenEpoch: 5); // it began loading another model since: holds nothing
        var adoption = t.Adopt(_ => true);
        Assert.Null(adoption.Model);
        Assert.Equal(ClusterState.Empty, t.State);
    }

    [Fact]
    public void A_load_completes_when_every_slice_of_its_epoch_has_arrived()
    {
        var t = new ModelTracker();
        t.Adopt(_ => true);
        int epoch = t.BeginPlan();
        Assert.Equal(ClusterState.Loading, t.State);
        Assert.True(t.IsCurrent(epoch));
        Assert.False(t.IsCurrent(epoch - 1));
        t.BeginLoad(new Dictionary<string, long> { ["a"] = 10, ["b"] = 20 }, Model(epoch, "a", "b"));
        string? Device(string p) => p == "a" ? "node-1/cpu" : "node-2/cpu";
        Assert.Null(t.SliceLoaded("a", new SliceLoaded(epoch - 1, "a", 10, 1, false), Device)); // an old epoch's fact
        Assert.Null(t.SliceLoaded("a", new SliceLoaded(epoch, "a", 10, 1, false), Device));
        Assert.Null(t.SliceLoaded("a", new SliceLoaded(epoch, "a", 10, 1, false), Device)); // a duplicate
        var loaded = t.SliceLoaded("b", new SliceLoaded(epoch, "b", 20, 2, true), Device);
        Assert.NotNull(loaded);
        Assert.Equal(new long[] { 10, 20 }, loaded.Devices.Select(u => u.LoadedBytes));
        Assert.Equal(new[] { false, true }, loaded.Devices.Select(u => u.Streamed));
        Assert.Equal(ClusterState.Ready, t.State);
        Assert.False(t.IsCurrent(epoch)); // nothing is awaited any more
    }

    [Fact]
    public void A_failed_load_is_failed_once_and_a_stale_failure_changes_nothing()
    {
        var t = new ModelTracker();
        t.Adopt(_ => true);
        int epoch = t.BeginPlan();
        t.BeginLoad(new Dictionary<string, long> { ["a"] = 10 }, Model(epoch, "a"));
        Assert.Equal(LoadFailure.Stale, t.FailLoad(epoch - 1, "old"));
        Assert.Equal(LoadFailure.Failed, t.FailLoad(epoch, "node-2 lost"));
        Assert.Equal(LoadFailure.Stale, t.FailLoad(epoch, "again"));
        Assert.Equal((ClusterState.Failed, "node-2 lost"), (t.State, t.Failure));
        Assert.Null(t.Loaded);
    }

    [Fact]
    public void A_loss_fails_the_load_that_needs_it_recovers_the_model_that_served_from_it_or_means_nothing()
    {
        var t = new ModelTracker();
        t.Adopt(_ => true);
        int epoch = t.BeginPlan();
        t.BeginLoad(new Dictionary<string, long> { ["a"] = 10, ["b"] = 20 }, Model(epoch, "a", "b"));
        Assert.Equal(Loss.Nothing, t.Lose(new[] { "c" }));
        Assert.Equal(Loss.FailsLoad, t.Lose(new[] { "b" }));

        var serving = Serving("a", "b");
        Assert.Equal(Loss.Nothing, serving.Lose(new[] { "c" }));
        Assert.Equal(Loss.Recover, serving.Lose(new[] { "b" }));
        Assert.DoesNotContain("b", serving.Holders);
    }

    [Fact]
    public void A_loss_while_starting_decides_nothing()
    {
        var t = new ModelTracker();
        Assert.Equal(Loss.Nothing, t.Lose(new[] { "a" }));
    }

    [Fact]
    public void A_failed_recovery_load_is_planned_again_and_a_recovery_without_room_degrades_until_capacity_joins()
    {
        var t = Serving("a", "b");
        var started = new DateTime(2026, 1, 1, 0, 0, 0, DateTimeKind.Utc);
        int epoch = t.BeginRecovery(started);
        Assert.Equal(ClusterState.Recovering, t.State);
        t.BeginLoad(new Dictionary<string, long> { ["a"] = 30 }, Model(epoch, "a"));
        Assert.Equal(Loss.FailsLoad, t.Lose(new[] { "a" }));
        Assert.Equal(LoadFailure.Recover, t.FailLoad(epoch, "a lost too"));
        int next = t.BeginRecovery(started.AddSeconds(5));
        Assert.Equal(started, t.RecoveryStarted); // one recovery, however many tries
        Assert.Equal(LoadFailure.Stale, t.FailLoad(epoch, "superseded"));
        Assert.False(t.RetryOnCapacity);
        Assert.Equal(LoadFailure.Degraded, t.FailLoad(next, "no room")); // the re-plan could not be made
        Assert.Equal(ClusterState.Degraded, t.State);
        Assert.StartsWith($"degraded: no room (plan epoch {next})", t.Failure);
        Assert.False(t.IsCurrent(next)); // a late fact of the degraded plan is stale
        Assert.True(t.RetryOnCapacity);
        Assert.Equal(next + 1, t.BeginRecovery(started.AddSeconds(9)));
    }

    [Fact]
    public void A_coordinator_without_a_quorum_plans_nothing_and_is_degraded_until_a_worker_registers_again()
    {
        var t = Serving("a", "b");
        Assert.Equal(Loss.Recover, t.Lose(new[] { "b" }));
        int epoch = t.Epoch;
        t.AwaitQuorum("node n2 (n2/cpu) was lost", DateTime.UtcNow);
        Assert.Equal(ClusterState.Degraded, t.State);
        Assert.Equal(epoch, t.Epoch); // no epoch spent: the other side's coordinator owns the next one
        Assert.Null(t.Pending);
        Assert.Contains("lacks a majority", t.Failure);
        Assert.True(t.RetryOnCapacity); // a worker registering again (the cut healed) retries the recovery
        Assert.Equal(epoch + 1, t.BeginRecovery(DateTime.UtcNow));
    }

    [Fact]
    public void A_reported_slice_is_unused_when_neither_served_nor_loading_and_older_than_the_newest_epoch()
    {
        var t = Serving("a");
        Assert.False(t.Unused(Held(1))); // served
        int epoch = t.BeginRecovery(DateTime.UtcNow);
        Assert.False(t.Unused(Held(epoch))); // the newest
        t.BeginLoad(new Dictionary<string, long> { ["b"] = 1 }, Model(epoch, "b"));
        Assert.False(t.Unused(Held(epoch))); // loading
        Assert.True(t.Unused(Held(0)));
        Assert.False(new ModelTracker().Unused(Held(0))); // starting: reports are collected, not judged
    }

    [Fact]
    public void Stopping_ends_every_decision()
    {
        var t = Serving("a");
        t.Stop();
        Assert.Equal(ClusterState.Stopping, t.State);
        Assert.Equal(Loss.Nothing, t.Lose(new[] { "a" }));
    }
}
