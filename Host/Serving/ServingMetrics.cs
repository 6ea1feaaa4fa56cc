using Prometheus;
using ShardPipe.Messages;

namespace ShardPipe.Host.Serving;

/// <summary>
/// The server's Prometheus metrics (prometheus-net, a registry of its own per server): requests by endpoint and
/// outcome, prompt and completion tokens, time to first token and inter-token latency, the server's running and waiting requests, and — read from the cluster's status at each scrape — its in-flight and queued requests, the
/// planned, loaded and budget bytes per device, each device's node step time, hop latency and rows per merged step
/// (what the workers report with their registrations), the epoch and the recoveries.
/// </summary>
public sealed class ServingMetrics
{
    public CollectorRegistry Registry { get; } = Metrics.NewCustomRegistry();
    private readonly Counter _requests, _promptTokens, _completionTokens;
    private readonly Histogram _ttft, _itl;
    private readonly Gauge _prefixHitRate, _prefixBytes;
    private readonly Gauge _rows, _running, _waiting, _clusterInFlight, _clusterQueued, _deviceBytes, _epoch, _recoveries, _ready, _stepMs, _hopMs, _steps;

    public ServingMetrics()
    {
        var f = Metrics.WithCustomRegistry(Registry);
        _requests = f.CreateCounter("shardpipe_requests_total", "Requests answered, by endpoint and outcome (ok, bad_request, not_found, busy, unavailable, timeout, error, cancelled).",
            new CounterConfiguration { LabelNames = new[] { "endpoint", "outcome" } });
        _promptTokens = f.CreateCounter("shardpipe_prompt_tokens_total", "Prompt tokens of the requests run.");
        _completionTokens = f.CreateCounter("shardpipe_completion_tokens_total", "Tokens generated.");
        _ttft = f.CreateHistogram("shardpipe_time_to_first_token_seconds", "From a prompt's start on the cluster to its first token.",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.005, 2, 14) });
        _itl = f.CreateHistogram("shardpipe_inter_token_latency_seconds", "Between consecutive tokens of one request.",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.001, 2, 14) });
        _rows = f.CreateGauge("shardpipe_rows_per_step", "Mean rows (sequences of all the requests merged: continuous batching) of the recent steps on the device's node, as its worker last reported.",
            new GaugeConfiguration { LabelNames = new[] { "device" } });
        _prefixHitRate = f.CreateGauge("shardpipe_prefix_cache_hit_rate", "Prompt tokens reused from the prefix cache over prompt tokens planned, at the device's stage (the first stage plans), as its worker last reported.",
            new GaugeConfiguration { LabelNames = new[] { "device" } });
        _prefixBytes = f.CreateGauge("shardpipe_prefix_cache_bytes", "Bytes of prompt blocks the device's prefix cache holds, as its worker last reported.",
            new GaugeConfiguration { LabelNames = new[] { "device" } });
        _running = f.CreateGauge("shardpipe_server_requests_running", "Requests holding an admission slot.");
        _waiting = f.CreateGauge("shardpipe_server_requests_waiting", "Requests waiting for an admission slot.");
        _clusterInFlight = f.CreateGauge("shardpipe_cluster_requests_in_flight", "Requests in the cluster's pipeline (all clients).");
        _clusterQueued = f.CreateGauge("shardpipe_cluster_requests_queued", "Requests queued by the cluster's coordinator (all clients).");
        _deviceBytes = f.CreateGauge("shardpipe_device_bytes", "Bytes per device: planned, loaded, budget.", new GaugeConfiguration { LabelNames = new[] { "device", "kind" } });
        _epoch = f.CreateGauge("shardpipe_plan_epoch", "The served model's plan epoch (rises with each recovery).");
        _recoveries = f.CreateGauge("shardpipe_recoveries", "Recoveries of the served model since it was loaded.");
        _ready = f.CreateGauge("shardpipe_model_ready", "1 when the model is served, else 0.");
        _stepMs = f.CreateGauge("shardpipe_stage_step_ms", "Median of the recent step times (compute per hop) on the device's node, as its worker last reported.", new GaugeConfiguration { LabelNames = new[] { "device" } });
        _hopMs = f.CreateGauge("shardpipe_hop_latency_ms", "Median of the recent activation hops the device's node received (send to receive).", new GaugeConfiguration { LabelNames = new[] { "device" } });
        _steps = f.CreateGauge("shardpipe_node_steps", "Steps the device's node has run since it started.", new GaugeConfiguration { LabelNames = new[] { "device" } });
    }

    public void Request(string endpoint, string outcome) => _requests.WithLabels(endpoint, outcome).Inc();

    public void Tokens(int prompt, int completion)
    {
        _promptTokens.Inc(prompt);
        _completionTokens.Inc(completion);
    }

    public void FirstToken(double seconds) => _ttft.Observe(seconds);

    public void NextToken(double seconds) => _itl.Observe(seconds);

    /// <summary>Refreshes the gauges from the server's admission and the cluster's status (at each scrape).</summary>
    public void Update(ServingAdmission admission, ClusterStatus status)
    {
        _running.Set(admission.Active);
        _waiting.Set(admission.Queued);
        _clusterInFlight.Set(status.InFlight);
        _clusterQueued.Set(status.Queued);
        _epoch.Set(status.PlanEpoch);
        _recoveries.Set(status.Recoveries);
        _ready.Set(status.State == ClusterState.Ready ? 1 : 0);
        foreach (var t in status.Timings ?? Array.Empty<DeviceTiming>())
        {
            _stepMs.WithLabels(t.Device).Set(t.Timing.StepP50Ms);
            _hopMs.WithLabels(t.Device).Set(t.Timing.HopP50Ms);
            _steps.WithLabels(t.Device).Set(t.Timing.Steps);
            _rows.WithLabels(t.Device).Set(t.Timing.RowsPerStep);
            if (t.Timing.PrefixCache is { } pc)
            {
                _prefixHitRate.WithLabels(t.Device).Set(pc.HitRate);
                _prefixBytes.WithLabels(t.Device).Set(pc.CachedBytes);
            }
        }
        foreach (var d in status.Devices)
        {
            _deviceBytes.WithLabels(d.Device, "planned").Set(d.PlannedBytes);
            _deviceBytes.WithLabels(d.Device, "loaded").Set(d.LoadedBytes);
            _deviceBytes.WithLabels(d.Device, "budget").Set(d.BudgetBytes);
        }
    }

    /// <summary>The outcome label of an HTTP status.</summary>
    public static string Outcome(int status) => status switch
    {
        < 400 => "ok",
        400 => "bad_request",
        404 => "not_found",
        429 => "busy",
        503 => "unavailable",
        504 => "timeout",
        _ => "error",
    };
}

/// <summary>Tokens produced over the last few seconds (for /status).</summary>
public sealed class TokenRate
{
    private readonly Queue<(long At, int N)> _recent = new();
    private const double Window = 5.0;

    public void Add(int n)
    {
        lock (_recent) _recent.Enqueue((System.Diagnostics.Stopwatch.GetTimestamp(), n));
    }

    public double PerSecond()
    {
        lock (_recent)
        {
            while (_recent.Count > 0 && System.Diagnostics.Stopwatch.GetElapsedTime(_recent.Peek().At).TotalSeconds > Window) _recent.Dequeue();
            return _recent.Sum(r => r.N) / Window;
        }
    }
}
