namespace ShardPipe.Tests.Support;

/// <summary>Awaits a condition that a cluster reaches asynchronously, failing with what was awaited after a deadline.</summary>
public static class Eventually
{
    public static Task True(Func<bool> condition, TimeSpan within, string what) => True(() => Task.FromResult(condition()), within, what);

    public static async Task True(Func<Task<bool>> condition, TimeSpan within, string what)
    {
        var deadline = DateTime.UtcNow + within;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new Xunit.Sdk.XunitException($"not reached within {within.TotalSeconds:0} s: {what}");
            await Task.Delay(20);
        }
    }
}
