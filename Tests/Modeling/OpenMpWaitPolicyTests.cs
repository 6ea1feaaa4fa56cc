using System.Text.Json.Nodes;
using ShardPipe.Modeling.Core;
using ShardPipe.Tests.Support;

namespace ShardPipe.Tests.Modeling;

/// <summary>
/// libtorch's OpenMP threads sleep between regions in the host (OMP_WAIT_POLICY=PASSIVE, set in the C environment
/// before libgomp loads), unless the user chose otherwise; every benchmark's JSON says which policy its figures ran under.
/// </summary>
public class OpenMpWaitPolicyTests
{
    [Fact]
    public void The_decision_sets_passive_only_where_nobody_chose_and_libgomp_can_still_read_it()
    {
        Assert.Equal((true, "passive"), OpenMpWaitPolicy.Decide(null, libgompLoaded: false, linux: true));
        Assert.Equal((true, "passive"), OpenMpWaitPolicy.Decide("  ", libgompLoaded: false, linux: true));
        Assert.Equal((false, "active (OMP_WAIT_POLICY)"), OpenMpWaitPolicy.Decide("ACTIVE", libgompLoaded: false, linux: true));
        Assert.Equal((false, "passive (OMP_WAIT_POLICY)"), OpenMpWaitPolicy.Decide("Passive", libgompLoaded: true, linux: true));
        Assert.Equal((false, "libgomp default (loaded before it could be set)"), OpenMpWaitPolicy.Decide(null, libgompLoaded: true, linux: true));
        Assert.Equal((false, "not applicable"), OpenMpWaitPolicy.Decide(null, libgompLoaded: false, linux: false));
    }

    [Theory]
    [InlineData("", "passive")]
    [InlineData("active", "active (OMP_WAIT_POLICY)")]
    public void The_host_sets_it_at_start_and_a_benchmark_reports_it(string userValue, string expected)
    {
        if (!OperatingSystem.IsLinux()) return;
        var cli = ShardPipeProcess.Run(new Dictionary<string, string> { [OpenMpWaitPolicy.EnvironmentVariable] = userValue },
            "bench", "bandwidth", "--size", "1MiB", "--repeats", "1", "--json");
        Assert.True(cli.ExitCode == 0, cli.Stderr);
        var o = JsonNode.Parse(cli.Stdout.Trim())!.AsObject();
        Assert.Equal(expected, o["openmp_wait_policy"]!.GetValue<string>());
    }
}
