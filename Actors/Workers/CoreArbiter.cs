namespace ShardPipe.Actors.Workers;

/// <summary>
/// The process's cores among the stages that compute at once (<c>shardpipe.compute-share</c>). Every stage of an
/// embedded cluster — and any node process — runs its steps on its own compute thread; libtorch's intra-op setting
/// (OpenMP) and the decode kernels' <see cref="ShardPipe.Modeling.Layers.SpinPool"/> both read the calling thread's
/// setting, so a stage may set it per step. A stage that computes alone (one stream: the stages take turns; one group
/// circulating: the same) gets every core, as <c>generate</c> in one process does; stages computing at once (a
/// pipelined prefill of arriving prompts) share them, so they never oversubscribe the machine by more than the stages
/// that enter while one is already running. A fixed split (cores ÷ nodes, 1 thread each on 2 cores and 3 nodes) left a
/// lone stage with one core and made one stream through 3 stages ≈ 7 ms per token slower than one process.
/// </summary>
public sealed class CoreArbiter
{
    /// <summary>The process's arbiter: the stages of every node in this process share it.</summary>
    public static CoreArbiter Shared { get; } = new(Environment.ProcessorCount);

    private int _cores;
    private int _computing;

    public CoreArbiter(int cores) => Cores = cores;

    /// <summary>The cores this process's steps may use in all (an embedded cluster: the machine's, or its compute threads).</summary>
    public int Cores
    {
        get => Volatile.Read(ref _cores);
        set
        {
            if (value < 1) throw new InvalidInputException($"compute cores must be at least 1 (got {value})");
            Volatile.Write(ref _cores, value);
        }
    }

    /// <summary>Stages computing now (entered and not yet left).</summary>
    public int Computing => Volatile.Read(ref _computing);

    /// <summary>
    /// The rule: threads for a step that starts while <paramref name="computing"/> stages (itself included) compute —
    /// an equal share of <paramref name="cores"/>, at least 1, at most <paramref name="limit"/> (the node's own cap:
    /// <c>compute-threads</c>, the count of its <c>compute-cores</c>; 0 = none).
    /// </summary>
    public static int Threads(int cores, int computing, int limit = 0)
    {
        if (cores < 1) throw new ArgumentOutOfRangeException(nameof(cores), cores, "at least 1");
        if (computing < 1) throw new ArgumentOutOfRangeException(nameof(computing), computing, "at least 1 (the step itself)");
        if (limit < 0) throw new ArgumentOutOfRangeException(nameof(limit), limit, "0 (none) or more");
        int share = Math.Max(1, cores / computing);
        return limit > 0 ? Math.Min(share, limit) : share;
    }

    /// <summary>A step starts: it counts as computing until the lease is disposed; its threads by <see cref="Threads"/>.</summary>
    public Lease Enter(int limit = 0)
    {
        int now = Interlocked.Increment(ref _computing);
        try { return new Lease(this, Threads(Cores, now, limit), limit); }
        catch { Interlocked.Decrement(ref _computing); throw; }
    }

    /// <summary>A step's share of the cores, held while it computes.</summary>
    public sealed class Lease : IDisposable
    {
        private CoreArbiter? _owner;
        private readonly int _limit;

        internal Lease(CoreArbiter owner, int threads, int limit)
        {
            _owner = owner;
            _limit = limit;
            Threads = threads;
        }

        /// <summary>Intra-op threads this step starts with.</summary>
        public int Threads { get; }

        /// <summary>
        /// The step's share now (between two of its layers): a long step — a prefill of hundreds of positions — that
        /// started beside another stage's step takes every core once that one ended, and one that started alone gives
        /// back its extra threads once another stage starts. <see cref="Threads"/> after the lease is disposed.
        /// </summary>
        public int Current => _owner is { } owner ? CoreArbiter.Threads(owner.Cores, Math.Max(1, owner.Computing), _limit) : Threads;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _owner, null) is { } owner) Interlocked.Decrement(ref owner._computing);
        }
    }
}
