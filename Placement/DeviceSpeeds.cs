using System.Globalization;
using ShardPipe.Checkpoints;

namespace ShardPipe.Placement;

/// <summary>
/// Speed-aware placement's one rule and its grammar. A device's share of the decoder blocks is its budget × its
/// relative speed (its measured speed over the mean of the speeds known): with equal speeds every node fills the same
/// fraction of its budget (the byte-balanced rule, which keeps each node's KV-cache room in proportion to its layers),
/// and a node at half the speed fills half that fraction — with equal budgets it holds half the blocks, so each
/// node's time per step evens out. A device with no speed (an older peer) counts as equal to the mean. Budgets stay
/// hard limits. Pure.
/// </summary>
public static class DeviceSpeeds
{
    /// <summary>How the cluster planner weighs devices: <c>speed</c> (budget × relative speed) or <c>bytes</c> (budget alone).</summary>
    public static readonly IReadOnlyList<string> Modes = new[] { "speed", "bytes" };

    /// <summary>
    /// Each device's weight for the balanced fill: its budget × its relative speed. Null or empty
    /// <paramref name="speeds"/>, or none of these devices in it, gives the budgets unchanged.
    /// </summary>
    public static double[] Weights(IReadOnlyList<(DeviceId Device, double Bytes)> devices, IReadOnlyDictionary<DeviceId, double>? speeds)
    {
        var budgets = devices.Select(d => d.Bytes).ToArray();
        if (speeds is null) return budgets;
        var known = devices.Where(d => speeds.ContainsKey(d.Device)).Select(d => Check(d.Device, speeds[d.Device])).ToList();
        if (known.Count == 0 || known.All(s => s == known[0])) return budgets; // exactly the byte-balanced weights, no rounding
        // Measured speeds are noisy: a speed counts only as one of a few steps below the fastest, and one within
        // MinimumRatio of the fastest counts as equal to it, so that nodes of one kind get the same plan run after run.
        double fastest = known.Max();
        double Step(double s) => Relative(s, fastest);
        var stepped = known.Select(Step).ToList();
        if (stepped.All(r => r == 1.0)) return budgets;
        double mean = stepped.Average();
        return devices.Select(d => d.Bytes * (speeds.TryGetValue(d.Device, out double s) ? Step(s) / mean : 1.0)).ToArray();
    }

    /// <summary>A device counts as slower only when the fastest is at least this many times faster.</summary>
    public const double MinimumRatio = 1.5;

    /// <summary>
    /// A speed relative to the fastest, in the steps the planner uses: 1 within <see cref="MinimumRatio"/>, else
    /// rounded to a half power of two (0.71, 0.5, 0.35, 0.25, …).
    /// </summary>
    public static double Relative(double speed, double fastest)
    {
        double r = speed / fastest;
        if (r * MinimumRatio > 1.0) return 1.0;
        return Math.Pow(2, Math.Round(Math.Log2(r) * 2, MidpointRounding.AwayFromZero) / 2);
    }

    private static double Check(DeviceId device, double speed) =>
        double.IsFinite(speed) && speed > 0 ? speed : throw new PlacementException($"{device}: speed {speed} is not a positive number");

    /// <summary>
    /// <c>plan --nodes</c>: <c>node/device=SIZE[@SPEED],…</c> (e.g. <c>n1/cpu=16GB@2.0,n2/cpu=16GB@1</c>): the budgets as
    /// <see cref="MaxMemory.Parse"/> reads them, and the speeds given (any positive unit, only their ratios count).
    /// </summary>
    public static (List<(DeviceId Device, double Bytes)> Devices, Dictionary<DeviceId, double> Speeds) Parse(string spec)
    {
        var budgets = new List<string>();
        var speedText = new List<(int Entry, string Text)>();
        foreach (var part in spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = part.LastIndexOf('='), at = part.LastIndexOf('@');
            if (at > eq && eq > 0)
            {
                speedText.Add((budgets.Count, part[(at + 1)..].Trim()));
                budgets.Add(part[..at].Trim());
            }
            else budgets.Add(part);
        }
        var devices = MaxMemory.Parse(string.Join(",", budgets));
        var speeds = new Dictionary<DeviceId, double>();
        foreach (var (entry, text) in speedText)
        {
            var device = devices[entry].Device;
            if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double speed) || !double.IsFinite(speed) || speed <= 0)
                throw new InvalidInputException($"--nodes entry for {device}: speed '{text}' is not a positive number (e.g. {device}=16GB@2.0)");
            speeds[device] = speed;
        }
        return (devices, speeds);
    }
}
