using Akka.Actor;
using ShardPipe.Messages;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// Who may open an activation link to a stage, and whose link offer a stage takes (pure; the worker asks). A link
/// carries steps straight into the stage's queue, so it is offered only to the stage that sends there in the
/// current route — the hop before this one, or the head whose next token loops back to the first hop — and an offer
/// is taken only from the stage it names (a stranger's offer would point this stage's activations at its own host).
/// </summary>
public static class LinkIntake
{
    /// <summary>True when a hop of <paramref name="sender"/> sends its output to a hop of <paramref name="self"/> in <paramref name="route"/>.</summary>
    public static bool SendsTo(IReadOnlyList<PipelineHop> route, ActorPath sender, ActorPath self)
    {
        for (int i = 0; i < route.Count; i++)
        {
            if (!Same(route[i].WorkerPath, sender)) continue;
            if (i + 1 < route.Count && Same(route[i + 1].WorkerPath, self)) return true;
            if (route[i].Head && route.Count > 0 && Same(route[0].WorkerPath, self)) return true;
        }
        return false;
    }

    /// <summary>True when an offer naming <paramref name="target"/> came from that very actor.</summary>
    public static bool IsOfferFrom(string target, ActorPath sender) => Same(target, sender);

    private static bool Same(string serialized, ActorPath path) =>
        ActorPath.TryParse(serialized, out var parsed) && parsed.Address.Equals(path.Address) && parsed.Elements.SequenceEqual(path.Elements);
}
