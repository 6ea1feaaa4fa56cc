using System.Text.Json.Nodes;
using Akka.Actor;
using ShardPipe.Messages;

namespace ShardPipe.Host.Cli;

/// <summary>How <c>drain</c> and <c>rebalance</c> wait for their answer and report it (one line, or one JSON object).</summary>
public static class MoveReport
{
    /// <summary>The move's answer; no answer within <paramref name="timeout"/> is a <see cref="ClusterException"/>.</summary>
    public static async Task<LayersMoved> Await(Task<LayersMoved> move, string what, TimeSpan timeout)
    {
        try { return await move; }
        catch (AskTimeoutException) { throw new ClusterException($"the {what} did not finish within {timeout.TotalSeconds:0} s (see status)"); }
    }

    public static void Print(string what, LayersMoved m, bool json)
    {
        if (json)
        {
            JsonOut.Print(new JsonObject
            {
                ["plan_epoch"] = m.PlanEpoch,
                ["seconds"] = Math.Round(m.Seconds, 3),
                ["moved"] = ClusterSession.MapJson(m.Moved),
                ["leaving"] = new JsonArray(m.Leaving.Select(n => (JsonNode)JsonValue.Create(n)!).ToArray()),
            });
            return;
        }
        string moved = m.Moved.Length > 0 ? string.Join(", ", m.Moved.Select(e => $"{e.Module} → {e.Device}")) : "nothing";
        Tables.Line($"{what}: epoch {m.PlanEpoch} serves ({m.Seconds:0.00} s); moved {moved}" +
                    (m.Leaving.Length > 0 ? $"; told to leave: {string.Join(", ", m.Leaving)}" : ""));
    }
}
