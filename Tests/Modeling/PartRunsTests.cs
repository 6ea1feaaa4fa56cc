using ShardPipe.Modeling.Layers;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// A job's parts shared among threads (<see cref="PartRuns"/>): each thread takes its own contiguous run front to back,
/// then the rest of the others' runs from their backs; every part is taken exactly once, also under contention.
/// </summary>
public class PartRunsTests
{
    private static List<int> Drain(PartRuns runs, int slot)
    {
        var taken = new List<int>();
        for (int p; (p = runs.Claim(slot)) >= 0;) taken.Add(p);
        return taken;
    }

    [Fact]
    public void A_slot_takes_its_own_run_front_to_back_then_the_others_from_the_back()
    {
        var runs = new PartRuns(10, 2);
        Assert.Equal(new[] { 0, 1, 2 }, new[] { runs.Claim(0), runs.Claim(0), runs.Claim(0) });
        Assert.Equal(5, runs.Claim(1)); // slot 1's run is [5, 10)
        Assert.Equal(new[] { 3, 4, 9, 8, 7, 6 }, Drain(runs, 0));
        Assert.Equal(-1, runs.Claim(1));
    }

    [Theory]
    [InlineData(3, 4)]
    [InlineData(8, 2)]
    [InlineData(7, 3)]
    [InlineData(0, 2)]
    [InlineData(5, 1)]
    public void Every_part_is_taken_once_whatever_the_split(int parts, int slots)
    {
        var runs = new PartRuns(parts, slots);
        var taken = Enumerable.Range(0, slots).SelectMany(s => Drain(runs, s)).ToList();
        Assert.Equal(Enumerable.Range(0, parts), taken.Order());
        // Each slot's own run is contiguous and comes first, in order.
        var fresh = new PartRuns(parts, slots);
        for (int s = 0; s < slots; s++)
        {
            int from = parts * s / slots, to = parts * (s + 1) / slots;
            for (int p = from; p < to; p++) Assert.Equal(p, fresh.Claim(s));
        }
    }

    [Fact]
    public void Threads_claiming_at_once_take_every_part_exactly_once()
    {
        for (int round = 0; round < 50; round++)
        {
            const int parts = 997, slots = 4;
            var runs = new PartRuns(parts, slots);
            var counts = new int[parts];
            using var start = new Barrier(slots);
            var threads = Enumerable.Range(0, slots).Select(s => new Thread(() =>
            {
                start.SignalAndWait();
                for (int p; (p = runs.Claim(s)) >= 0;) Interlocked.Increment(ref counts[p]);
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());
            Assert.All(counts, c => Assert.Equal(1, c));
        }
    }
}
