using System.Globalization;
using System.Text.Json.Nodes;

namespace ShardPipe.Host.Bench;

/// <summary>
/// Where a recovery's seconds go, read from the surviving nodes' logs (each line starts with its UTC time,
/// <c>HH:mm:ss.fff</c>): the first line of each step, as seconds after the kill.
/// </summary>
public static class FailoverTimeline
{
    /// <summary>Each step and the words of the log line that marks it, in the order a coordinator failover goes through them.</summary>
    public static readonly (string Step, string Marker)[] Steps =
    {
        ("crash_probe_downed", "(its process is gone)"),
        ("unreachable", " is unreachable"),
        ("coordinator_node_downed", "failover: "),
        ("coordinator_started", "coordinator started on "),
        ("adopted", "adopted model "),
        ("replan_started", "recovering "),
        ("replan_sent", "recovery plan (epoch"),
        ("slices_loaded", " recovered (epoch"),
    };

    /// <summary>Seconds after <paramref name="killedAtUtc"/> of each step's first line after it, in the logs given.</summary>
    public static JsonObject From(IEnumerable<string> lines, DateTime killedAtUtc)
    {
        var found = new Dictionary<string, double>();
        foreach (var line in lines)
        {
            if (line.Length < 12 || !TimeSpan.TryParseExact(line[..12], @"hh\:mm\:ss\.fff", CultureInfo.InvariantCulture, out var time)) continue;
            double after = (killedAtUtc.Date + time - killedAtUtc).TotalSeconds;
            if (after < -43200) after += 86400; // the log's day turned after the kill
            if (after < 0) continue;
            foreach (var (step, marker) in Steps)
                if (line.Contains(marker, StringComparison.Ordinal) && (!found.TryGetValue(step, out var seen) || after < seen)) found[step] = after;
        }
        var timeline = new JsonObject();
        foreach (var (step, _) in Steps)
            if (found.TryGetValue(step, out var s)) timeline[step] = Math.Round(s, 3);
        return timeline;
    }
}
