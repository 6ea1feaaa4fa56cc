using System.Runtime.InteropServices;
using ShardPipe.Modeling.Layers;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// <see cref="WeightPrefetch"/> learns which product's weight follows which on a thread and, when a product ends, hands
/// the pool's idle helpers the one that followed it last time (at most <see cref="WeightPrefetch.Bytes"/>); a helper
/// spinning after a job prefetches a hinted range chunk by chunk until none is left.
/// </summary>
public class WeightPrefetchTests
{
    [Fact]
    public void The_order_is_learnt_and_the_follower_is_handed_to_the_helpers()
    {
        // Addresses nobody reads (a prefetch never faults): three "weights" in a loop, as a step's products come round.
        nint a = unchecked((nint)0x7f00_1000_0000), b = a + 0x10_0000, c = a + 0x20_0000;
        var pool = new SpinPool(1, "wp-learn-test");
        var thread = new Thread(() =>
        {
            foreach (var (w, bytes) in new[] { (a, 1L << 20), (b, 3L << 20), (c, 64L << 20), (a, 1L << 20) })
            {
                WeightPrefetch.Starting(w, bytes);
                WeightPrefetch.Done(w, pool);
            }
        });
        thread.Start();
        thread.Join();
        Assert.Equal((b, 3L << 20), WeightPrefetch.Following(a));
        Assert.Equal((c, 64L << 20), WeightPrefetch.Following(b));
        Assert.Equal((a, 1L << 20), WeightPrefetch.Following(c));
        // Another thread's products do not link into this order (each thread learns its own sequence).
        Assert.Null(WeightPrefetch.Following(unchecked((nint)0x7f00_3000_0000)));
    }

    [Fact]
    public void A_helper_spinning_after_a_job_prefetches_the_hinted_range()
    {
        var pool = new SpinPool(1, "wp-helper-test");
        var buffer = Marshal.AllocHGlobal(1 << 20);
        try
        {
            // The helper spins (rather than sleeps) for SpinPool.SpinTime after a job: hint right after one. A loaded
            // machine may preempt it for longer, so a few tries.
            bool consumed = false;
            for (int attempt = 0; attempt < 20 && !consumed; attempt++)
            {
                pool.Run(2, _ => Thread.SpinWait(100));
                pool.PrefetchHint(buffer, 1 << 20);
                var until = DateTime.UtcNow.AddMilliseconds(50);
                while (DateTime.UtcNow < until && !(consumed = pool.PendingPrefetch.At == 0)) Thread.Yield();
            }
            Assert.True(consumed, "no helper prefetched the hinted megabyte while spinning after a job");
        }
        finally
        {
            Marshal.FreeHGlobal(buffer);
        }
    }

    [Fact]
    public void A_pool_without_helpers_ignores_hints()
    {
        var pool = new SpinPool(0, "wp-none-test");
        pool.PrefetchHint(unchecked((nint)0x7f00_4000_0000), 4096);
        Assert.Equal((nint)0, pool.PendingPrefetch.At);
    }
}
