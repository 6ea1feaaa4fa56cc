using Akka.Actor;

namespace ShardPipe.Actors.Diagnostics;

/// <summary>
/// Places where a test can make one node misbehave (a stage that stalls, a load that drags) without a setting
/// or a sleep in the code that runs in production: each hook is empty unless a test installs one on that node's
/// ActorSystem. Real crashes, pauses and cuts need no hook (kill the process, SIGSTOP it, blackhole its transport).
/// </summary>
public sealed class FaultHooks : IExtension
{
    public static FaultHooks For(ActorSystem system) => system.WithExtension<FaultHooks, FaultHooksProvider>();

    /// <summary>
    /// Installs what a node's config asks for, for tests that cannot reach into its process: <c>shardpipe.debug.step-delay</c>
    /// (unset in production) makes every step of this node sleep first, so that a test can kill it mid-generation.
    /// </summary>
    public static void FromConfig(ActorSystem system, Akka.Configuration.Config config)
    {
        if (config.HasPath("shardpipe.debug.step-delay") && config.GetTimeSpan("shardpipe.debug.step-delay") is var delay && delay > TimeSpan.Zero)
            For(system).BeforeStep = () => Thread.Sleep(delay);
    }

    /// <summary>Runs on the thread of every stage step before it computes (a stalled or slow stage).</summary>
    public Action? BeforeStep { get; set; }

    /// <summary>Runs on the loading thread before a slice is materialised (a load that takes long).</summary>
    public Action? BeforeMaterialise { get; set; }
}

public sealed class FaultHooksProvider : ExtensionIdProvider<FaultHooks>
{
    public override FaultHooks CreateExtension(ExtendedActorSystem system) => new();
}
