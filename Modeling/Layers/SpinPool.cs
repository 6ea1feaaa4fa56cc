namespace ShardPipe.Modeling.Layers;

/// <summary>
/// Helper threads for the decode kernels: a decode step runs dozens of matrix-vector products of ~50–500 µs with small
/// operations between them, and waking a thread-pool thread for each costs tens of microseconds on a VM. These
/// threads spin briefly after each job, so the next product of the same step finds them awake, then sleep. One job
/// at a time: a caller that finds the helpers busy (another node of an embedded cluster) runs its job alone.
/// The spin is short (<see cref="SpinTime"/>): a spinning helper holds a core that libtorch's own threads need for
/// the work that follows a decode step (a prefill's GEMMs, another stage's step). It once spun 0.2 s (a tick-unit
/// mix-up), twice over after a burst of jobs, and fp32 prefill after a decode ran ≈ 18 % slower (BENCHMARKS.md,
/// session 10). While they spin they prefetch what <see cref="PrefetchHint"/> names (<see cref="WeightPrefetch"/>).
/// A job's parts are shared out in contiguous runs, one per thread, the rest taken from the back of the others' runs
/// (<see cref="PartRuns"/>).
/// </summary>
public sealed class SpinPool
{
    /// <summary>
    /// How long a helper spins for the next job before it sleeps (default 0.6 ms): longer than the gaps between the
    /// products of a decode step (microseconds of small libtorch calls) and than a pipeline stage's hand-over to the next
    /// stage of an embedded cluster in this process (0.23–0.29 ms from one stage's last product to the next one's first
    /// on a quiet machine, 0.47–0.65 ms loaded), short enough that a core is not held long from work that follows on
    /// libtorch's threads. Waking a sleeping helper costs tens of microseconds and leaves the job's first parts to the
    /// caller alone. At 0.2 ms the helper fell asleep during every hand-over: one stream through 3 embedded nodes took
    /// 1.17–1.25× the one-process time per token against 1.09–1.18× at 0.6 ms (3 experiments, medians of 10–12
    /// alternating generations each; 1.0 ms: once no better than 0.2, once as 0.6; 16 streams at once: the same
    /// aggregate). BENCHMARKS.md, session 18. Settable so that benchmarks compare in one process; 1 µs to 5 ms.
    /// </summary>
    public static TimeSpan SpinTime
    {
        get => TimeSpan.FromTicks((long)Math.Round(Volatile.Read(ref _spinTicks) * (double)TimeSpan.TicksPerSecond / System.Diagnostics.Stopwatch.Frequency));
        set
        {
            if (value < TimeSpan.FromMicroseconds(1) || value > TimeSpan.FromMilliseconds(5))
                throw new ArgumentOutOfRangeException(nameof(value), value, "a helper's spin is 1 µs to 5 ms");
            Volatile.Write(ref _spinTicks, Ticks(value));
        }
    }

    private static long _spinTicks = Ticks(TimeSpan.FromMicroseconds(600));

    private static long Ticks(TimeSpan t) => (long)Math.Round(t.Ticks * (double)System.Diagnostics.Stopwatch.Frequency / TimeSpan.TicksPerSecond);

    /// <summary>Where part <paramref name="p"/> of <paramref name="parts"/> near-equal parts of <paramref name="n"/> items
    /// begins (part p is [Bound(p), Bound(p + 1))).</summary>
    public static int Bound(int n, int p, int parts) => (int)((long)n * p / parts);

    public static SpinPool Shared { get; } = new(Math.Max(0, Environment.ProcessorCount - 1));

    private readonly Thread[] _threads;
    private readonly SemaphoreSlim _wake = new(0);
    private Job? _job;          // the current job; each job counts its own parts, so a helper still in an old one never takes a newer one's
    private long _generation;   // bumps with every job, so spinning helpers notice it
    private int _busy;
    private nint _prefetchAt, _prefetchEnd; // what idle helpers pull toward the cache next (PrefetchHint); 0: nothing

    /// <summary>Bytes an idle helper prefetches between two looks for a new job (4 KB: about a microsecond).</summary>
    private const int PrefetchChunk = 4096;

    /// <summary>
    /// Asks the helpers to prefetch [<paramref name="address"/>, + <paramref name="bytes"/>) into L2 while they wait for
    /// the next job (<see cref="WeightPrefetch"/>: the next product's weights, during the caller's serial work). A
    /// newer hint replaces an older one; a new job comes first (a helper looks for one every <see cref="PrefetchChunk"/>).
    /// </summary>
    public void PrefetchHint(nint address, long bytes)
    {
        if (address == 0 || bytes <= 0 || _threads.Length == 0) return;
        Volatile.Write(ref _prefetchAt, 0);
        Volatile.Write(ref _prefetchEnd, address + (nint)bytes);
        Volatile.Write(ref _prefetchAt, address);
    }

    /// <summary>What is still to be prefetched: [At, End), At = 0 when nothing (diagnostics, tests).</summary>
    public (nint At, nint End) PendingPrefetch => (Volatile.Read(ref _prefetchAt), Volatile.Read(ref _prefetchEnd));

    /// <summary>One chunk of the pending prefetch, claimed from the other helpers; false when there is none.</summary>
    private unsafe bool PrefetchSome()
    {
        nint at = Volatile.Read(ref _prefetchAt);
        if (at == 0) return false;
        nint end = Volatile.Read(ref _prefetchEnd);
        if (end <= at) return true; // a newer hint is being written: look again
        nint stop = Math.Min(end, at + PrefetchChunk);
        if (Interlocked.CompareExchange(ref _prefetchAt, stop >= end ? 0 : stop, at) != at) return true; // another helper took it, or a newer hint
        if (System.Runtime.Intrinsics.X86.Sse.IsSupported)
            for (nint a = at; a < stop; a += 64) System.Runtime.Intrinsics.X86.Sse.Prefetch1((void*)a);
        return true;
    }

    /// <summary>Off: the threads take a job's parts in one shared order, each whichever is next (benchmarks compare both in
    /// one process; default on: each thread its own contiguous run, <see cref="PartRuns"/>).</summary>
    public static bool ContiguousRuns { get; set; } = true;

    /// <summary>One job: its body and its own part counters. A helper that finishes the last part of a job and loops to
    /// claim another finds this job's parts all taken and stops — it cannot claim a part of the next job (with shared
    /// counters it once did, running the old body again and leaving a part of the new job undone: its output rows
    /// uninitialised).</summary>
    private sealed class Job(Action<int> body, int parts, int slots)
    {
        public readonly Action<int> Body = body;
        public readonly int Parts = parts;
        public readonly PartRuns? Runs = ContiguousRuns && slots > 1 ? new PartRuns(parts, slots) : null;
        public int Next;      // next part to take, in the shared order (Runs null)
        public int Remaining = parts; // parts not finished

        /// <summary>The next part for thread slot <paramref name="slot"/>, −1 when none is left.</summary>
        public int Claim(int slot)
        {
            if (Runs is not null) return Runs.Claim(slot);
            int p = Interlocked.Increment(ref Next) - 1;
            return p < Parts ? p : -1;
        }
    }

    /// <summary>A pool of <paramref name="helpers"/> background threads named <paramref name="name"/>-0, -1, … (the kernels
    /// share <see cref="Shared"/>; tests make their own).</summary>
    public SpinPool(int helpers, string name = "shardpipe-kernel")
    {
        ArgumentOutOfRangeException.ThrowIfNegative(helpers);
        _threads = Enumerable.Range(0, helpers).Select(i => new Thread(() => Loop(i + 1)) { IsBackground = true, Name = $"{name}-{i}" }).ToArray();
        foreach (var t in _threads) t.Start();
    }

    public int Helpers => _threads.Length;

    /// <summary>Parts per helper-and-caller thread that a job is cut into: parts are claimed one at a time, so when the
    /// OS preempts a thread mid-job (a loaded machine, another node of an embedded cluster) the others take the rest
    /// and the job waits for at most one small part, not half the job.</summary>
    public const int PartsPerThread = 4;

    /// <summary>How many parts to cut a job of <paramref name="rows"/> output rows into: at least
    /// <paramref name="minRowsPerPart"/> rows each, <see cref="PartsPerThread"/> per thread that libtorch's intra-op
    /// setting and the helpers allow; 1 runs it on the caller alone.</summary>
    public int Parts(int rows, int minRowsPerPart)
    {
        int threads = Math.Max(1, Math.Min(TorchSharp.torch.get_num_threads(), Helpers + 1));
        return threads == 1 ? 1 : Math.Clamp(rows / Math.Max(1, minRowsPerPart), 1, threads * PartsPerThread);
    }

    /// <summary>Runs <paramref name="body"/> for parts 0..parts−1, on this thread and the helpers; returns when all are done.</summary>
    public void Run(int parts, Action<int> body)
    {
        if (parts <= 1 || _threads.Length == 0 || Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
        {
            for (int p = 0; p < parts; p++) body(p);
            return;
        }
        var job = new Job(body, parts, _threads.Length + 1);
        try
        {
            Volatile.Write(ref _job, job);
            Interlocked.Increment(ref _generation);
            if (_wake.CurrentCount < _threads.Length) _wake.Release(_threads.Length - _wake.CurrentCount);
            Work(job, 0);
            AwaitHelpers(job);
        }
        finally
        {
            Volatile.Write(ref _job, null);
            Volatile.Write(ref _busy, 0);
        }
    }

    /// <summary>How long the caller waits for the helpers' last parts with pause instructions alone before it yields its
    /// core between checks: a part takes microseconds, and each yield is a system call (tens of microseconds through this
    /// VM's hypervisor; <c>sched_yield</c> was ≈ 3 % of an int4 decode step's main thread in a <c>perf</c> profile). A
    /// helper that the OS has preempted (an embedded cluster's stages on two cores) still gets the core after this.</summary>
    public static readonly TimeSpan PauseOnlyWait = TimeSpan.FromMicroseconds(50);

    private static readonly long PauseOnlyTicks = (long)(PauseOnlyWait.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);

    private static void AwaitHelpers(Job job)
    {
        if (Volatile.Read(ref job.Remaining) <= 0) return;
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        while (Volatile.Read(ref job.Remaining) > 0)
        {
            if (System.Diagnostics.Stopwatch.GetTimestamp() - started > PauseOnlyTicks)
            {
                var spin = new SpinWait();
                while (Volatile.Read(ref job.Remaining) > 0) spin.SpinOnce(-1);
                return;
            }
            Thread.SpinWait(8);
        }
    }

    /// <summary>Runs parts of <paramref name="job"/> as thread slot <paramref name="slot"/> (0: the caller) until none is left.</summary>
    private static void Work(Job job, int slot)
    {
        int p;
        while ((p = job.Claim(slot)) >= 0)
        {
            job.Body(p);
            Interlocked.Decrement(ref job.Remaining);
        }
    }

    /// <summary>A helper's life as thread slot <paramref name="slot"/>: spin for a job (prefetching what it is hinted), run its parts, sleep when none comes.</summary>
    private void Loop(int slot)
    {
        long seen = 0;
        while (true)
        {
            long started = System.Diagnostics.Stopwatch.GetTimestamp(), spin = Volatile.Read(ref _spinTicks);
            while (Volatile.Read(ref _generation) == seen)
            {
                if (System.Diagnostics.Stopwatch.GetTimestamp() - started > spin)
                {
                    // Sleep until a job newer than the last one seen: a permit left over from a job that found this
                    // helper spinning is consumed here, not taken as a reason to spin once more.
                    do _wake.Wait(); while (Volatile.Read(ref _generation) == seen);
                    break;
                }
                if (!PrefetchSome()) Thread.SpinWait(20);
            }
            seen = Volatile.Read(ref _generation);
            if (Volatile.Read(ref _job) is { } job) Work(job, slot);
        }
    }
}
