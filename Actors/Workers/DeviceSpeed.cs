using System.Diagnostics;
using TorchSharp;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// How fast a node computes, in bytes of weights per second, as a worker reports it for speed-aware placement: a
/// calibration at start (a float32 matrix-vector product over 32 MiB of weights — what a decode step does per layer —
/// on the stage's compute thread, the best of seven runs spread over ≈0.1 s: a few ms of compute, and robust to a
/// neighbour's burst), then, once
/// the node has run enough single-row steps of a slice, the slice's bytes over its median step time. Both count
/// each step's fixed costs too, so small slices read somewhat slower than the calibration; only ratios between nodes
/// matter to the planner.
/// </summary>
public static class DeviceSpeed
{
    private const int Rows = 4096, Cols = 2048, Runs = 7;
    private static readonly TimeSpan Pause = TimeSpan.FromMilliseconds(10); // runs spread over ≈0.1 s: a neighbour's burst rarely covers them all
    /// <summary>Steps a node must have run (recently) before its step timings replace the calibration.</summary>
    public const int MinSteps = 32;

    /// <summary>
    /// The calibration on the calling thread (the stage's compute thread, pinned as its steps are), with libtorch's
    /// threads as the node's steps use them. <paramref name="slowdown"/> (≥ 1) is the benchmarks' simulated slower
    /// machine (<c>shardpipe.debug.compute-slowdown</c>): its steps take that many times longer, so its speed is that many times lower.
    /// </summary>
    public static double Calibrate(double slowdown = 1)
    {
        using var noGrad = torch.no_grad();
        using var w = torch.ones(Rows, Cols, dtype: torch.float32);
        using var x = torch.ones(Cols, dtype: torch.float32);
        double best = double.MaxValue;
        for (int i = 0; i <= Runs; i++) // the first run pages the matrix in and starts libtorch's threads: not counted
        {
            long started = Stopwatch.GetTimestamp();
            using var y = torch.mv(w, x);
            double seconds = Stopwatch.GetElapsedTime(started).TotalSeconds;
            if (i > 0) best = Math.Min(best, seconds);
            Thread.Sleep(Pause);
        }
        return (double)Rows * Cols * sizeof(float) / Math.Max(best, 1e-7) / slowdown;
    }

    /// <summary>
    /// The speed a node's real steps of its slice show: <paramref name="heldBytes"/> of weights over the median step time,
    /// once at least <see cref="MinSteps"/> steps ran since the slice was loaded (<paramref name="sinceLoad"/>; older samples
    /// timed another slice) with one row each on average (decode: merged steps of several requests and long prefills read
    /// as another speed); null before that. <paramref name="stepMs"/> and <paramref name="rows"/>: the node's recent samples, oldest first.
    /// </summary>
    public static double? FromSteps(long heldBytes, IReadOnlyList<double> stepMs, IReadOnlyList<double> rows, long sinceLoad)
    {
        int n = (int)Math.Min(Math.Min(sinceLoad, stepMs.Count), rows.Count);
        if (heldBytes <= 0 || n < MinSteps) return null;
        var steps = stepMs.Skip(stepMs.Count - n).Order().ToList();
        double median = steps[n / 2];
        double meanRows = rows.Skip(rows.Count - n).Average();
        return median > 0 && meanRows <= 1.5 ? heldBytes / (median / 1000.0) : null;
    }

    /// <summary>Bytes per second as status prints it: "3.2 GB/s".</summary>
    public static string Format(double bytesPerSecond) => $"{bytesPerSecond / 1e9:0.00} GB/s";
}
