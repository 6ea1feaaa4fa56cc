using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;
using ShardPipe.Host.Cli;
using ShardPipe.Messages;

namespace ShardPipe.Host.Serving;

/// <summary>The status endpoints: /health (200 when the model is ready, else 503), /status (the cluster, per device) and /metrics (Prometheus).</summary>
public sealed partial class OpenAiServer
{
    private async Task<ClusterStatus> ReadyStatus()
    {
        var status = await _session.Client.StatusAsync(_settings.ReadyTimeout);
        if (status.State != ClusterState.Ready)
            throw OpenAiException.Unavailable($"the model is not ready (state: {status.StateName}{(status.Detail is { } d ? $": {d}" : "")})");
        return status;
    }

    private async Task Metrics(HttpContext ctx)
    {
        _metrics.Update(_admission, await _session.Client.StatusAsync(_settings.StatusTimeout));
        ctx.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        await _metrics.Registry.CollectAndExportAsTextAsync(ctx.Response.Body, ctx.RequestAborted);
    }

    private async Task Health(HttpContext ctx)
    {
        var status = await _session.Client.StatusAsync(_settings.StatusTimeout);
        bool ok = status.State == ClusterState.Ready;
        await Json(ctx, ok ? 200 : 503, new JsonObject { ["status"] = ok ? "ok" : "unavailable", ["state"] = status.StateName, ["detail"] = status.Detail });
    }

    private async Task Status(HttpContext ctx)
    {
        var s = await _session.Client.StatusAsync(_settings.StatusTimeout);
        await Json(ctx, 200, new JsonObject
        {
            ["model"] = _settings.ModelId,
            ["state"] = s.StateName,
            ["epoch"] = s.PlanEpoch,
            ["nodes"] = new JsonArray(s.Nodes.Select(n => (JsonNode)n).ToArray()),
            ["device_map"] = ClusterSession.MapJson(s.DeviceMap),
            ["devices"] = new JsonArray(s.Devices.Select(d =>
            {
                var timing = s.Timings?.FirstOrDefault(t => t.Device == d.Device)?.Timing;
                return (JsonNode)new JsonObject
                {
                    ["device"] = d.Device, ["planned_bytes"] = d.PlannedBytes, ["loaded_bytes"] = d.LoadedBytes, ["budget_bytes"] = d.BudgetBytes, ["streamed"] = d.Streamed,
                    ["kv_bytes_per_token"] = d.KvBytesPerToken, ["kv_budget_bytes"] = d.KvBudgetBytes, ["kv_reserved_bytes"] = d.KvReservedBytes,
                    ["step_ms_p50"] = timing is null ? null : Math.Round(timing.StepP50Ms, 3), ["hop_ms_p50"] = timing is null ? null : Math.Round(timing.HopP50Ms, 3),
                    ["rows_per_step"] = timing is null ? null : Math.Round(timing.RowsPerStep, 2),
                    ["speed_bytes_per_s"] = s.Timings?.FirstOrDefault(t => t.Device == d.Device)?.Speed is { } speed ? Math.Round(speed) : null,
                    ["prefix_hit_rate"] = timing?.PrefixCache is { } pc ? Math.Round(pc.HitRate, 4) : null,
                    ["prefix_cached_bytes"] = timing?.PrefixCache?.CachedBytes, ["prefix_restarts"] = timing?.PrefixCache?.Restarts,
                };
            }).ToArray()),
            ["cluster_in_flight"] = s.InFlight,
            ["cluster_queued"] = s.Queued,
            ["active"] = _admission.Active,
            ["queued"] = _admission.Queued,
            ["recoveries"] = s.Recoveries,
            ["tokens_per_s"] = Math.Round(_rate.PerSecond(), 3),
        });
    }
}
