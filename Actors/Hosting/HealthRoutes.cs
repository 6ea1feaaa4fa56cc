using Akka.Cluster;
using Akka.Http.Dsl;
using Akka.Management.Dsl;
using Ceen;
using Route = System.ValueTuple<string, Akka.Http.Dsl.HttpModuleBase>;

namespace ShardPipe.Actors.Hosting;

/// <summary>
/// The probes on the management endpoint (mounted by <see cref="Discovery"/>), GET only, JSON bodies:
/// <c>/alive</c> — 200 while the process and its ActorSystem run (a liveness probe); <c>/ready</c> — 200 once this
/// node is an Up member of the cluster, 503 before (joining, not yet discovered) and after (leaving, downed).
/// </summary>
public sealed class HealthRoutes : IManagementRouteProvider
{
    public Route[] Routes(ManagementRouteProviderSettings settings) =>
        new Route[] { ("/alive", new Probe(ready: false)), ("/ready", new Probe(ready: true)) };

    /// <summary>What <c>/ready</c> answers for a member status: ready only when Up.</summary>
    public static bool IsReady(MemberStatus status) => status == MemberStatus.Up;

    private sealed class Probe : HttpModuleBase
    {
        private readonly bool _ready;

        public Probe(bool ready) => _ready = ready;

        public override async Task<bool> HandleAsync(IAkkaHttpContext context)
        {
            if (!string.Equals(context.HttpContext.Request.Method, "GET", StringComparison.OrdinalIgnoreCase)) return false;
            var response = context.HttpContext.Response;
            if (!_ready)
            {
                await response.WriteAllJsonAsync("{\"alive\":true}");
                return true;
            }
            var status = Cluster.Get(context.ActorSystem).SelfMember.Status;
            bool ready = IsReady(status);
            response.StatusCode = ready ? HttpStatusCode.OK : HttpStatusCode.ServiceUnavailable;
            await response.WriteAllJsonAsync($"{{\"ready\":{(ready ? "true" : "false")},\"member\":\"{status}\"}}");
            return true;
        }
    }
}
