using ShardPipe.Messages;

namespace ShardPipe.Actors.Workers;

/// <summary>
/// Prompts that arrive together at the first stage (many streams opened at once), as a pure rule of
/// <see cref="StepBatcher"/>: a step is a new prompt when its request travels in no group yet and it brings more than one
/// position per row (a prompt, or its first chunk). A group made only of new prompts is still prefilling: it holds no
/// newcomer back (their prefill runs on the first stage while the group's runs on the next stages: two stages busy
/// rather than one), and the groups merge again when they come back to the first hop.
/// </summary>
public static class ArrivingPrompts
{
    /// <summary>Whether <paramref name="step"/> is a new request's prompt (or first prompt chunk) at the first hop.</summary>
    public static bool IsNewPrompt(StageInput step, bool inGroup) =>
        !inGroup && step.Hop == 0 && step.Generation is not null && step.InputIds is { Length: > 0 } ids && ids[0].Length > 1;
}
