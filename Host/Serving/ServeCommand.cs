using System.CommandLine;
using Microsoft.Extensions.Logging;
using ShardPipe.Host.Cli;

namespace ShardPipe.Host.Serving;

/// <summary>
/// <c>shardpipe serve --model M [--cluster embedded:N | HOST:PORT,…] [--host 127.0.0.1] [--port 8000]</c>: loads the model
/// on the cluster (or serves the one it already has) and answers OpenAI's completions API until stopped.
/// </summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var m = new ModelArguments();
        var d = new ServeSettings { ModelId = "", ModelFolder = "" }; // the defaults
        var host = new Option<string>("--host") { Description = "Address to listen on", DefaultValueFactory = _ => d.Host };
        var port = new Option<int>("--port") { Description = "Port to listen on (0 = any free port)", DefaultValueFactory = _ => d.Port };
        var maxActive = new Option<int>("--max-active") { Description = "Requests running at once", DefaultValueFactory = _ => d.MaxActive };
        var maxQueued = new Option<int>("--max-queued") { Description = "Requests waiting beyond those; past both, 429", DefaultValueFactory = _ => d.MaxQueued };
        var maxTokens = new Option<int>("--max-tokens") { Description = "The most max_tokens a request may ask for", DefaultValueFactory = _ => d.MaxTokens };
        var timeout = new Option<int>("--request-timeout") { Description = "Seconds a request may run before it ends with an error", DefaultValueFactory = _ => (int)d.RequestTimeout.TotalSeconds };
        var prefill = new Option<int>("--prefill-chunk") { Description = "Prompt positions prefilled per step, so that a long prompt holds the running requests up at most one chunk (0 = whole prompts)", DefaultValueFactory = _ => d.PrefillChunk };
        var batchRows = new Option<int>("--max-batch-rows") { Description = "The most rows (requests) in one merged step, for an embedded cluster (a cluster of nodes: their shardpipe.batching.max-rows)", DefaultValueFactory = _ => d.MaxBatchRows };
        var apiKey = new Option<string?>("--api-key") { Description = "Require Authorization: Bearer KEY on /v1/*, /tokenize and /detokenize (401 otherwise); also read from $SHARDPIPE_API_KEY" };
        var protectStatus = new Option<bool>("--protect-status") { Description = "With an API key: /status, /metrics and the dashboard need it too (/health stays open)" };
        var speculation = new SpeculationOptions();
        var noPrefixCache = new Option<bool>("--no-prefix-cache") { Description = "Turn automatic prefix caching off, for an embedded cluster (a cluster of nodes: their shardpipe.prefix-cache.enabled)" };
        var cmd = new Command("serve", "Serve the model over HTTP with OpenAI's API (/v1/models, /v1/completions, /v1/chat/completions with tools), vLLM's /tokenize and /detokenize, /health, /status, /metrics and a dashboard at /")
            { host, port, maxActive, maxQueued, maxTokens, timeout, prefill, batchRows, apiKey, protectStatus, noPrefixCache };
        m.AddTo(cmd);
        speculation.AddTo(cmd);
        CommandAction.Set(cmd, async (parse, log) =>
        {
            var speculate = speculation.Read(parse, 1, SpeculationOptions.LocalFolder(parse.GetValue(m.Model)!,
                new ShardPipe.Checkpoints.LocateOptions { Revision = parse.GetValue(m.Revision), Subfolder = parse.GetValue(m.Subfolder) }));
            string modelId = parse.GetValue(m.Model)!;
            int p = parse.GetValue(port);
            if (p is < 0 or > 65535) throw new InvalidInputException($"--port {p}: must be 0..65535");
            if (parse.GetValue(maxActive) < 1) throw new InvalidInputException("--max-active must be at least 1");
            if (parse.GetValue(maxQueued) < 0) throw new InvalidInputException("--max-queued must be at least 0");
            if (parse.GetValue(maxTokens) < 1) throw new InvalidInputException("--max-tokens must be at least 1");
            if (parse.GetValue(timeout) < 1) throw new InvalidInputException("--request-timeout must be at least 1 s");
            string hostName = parse.GetValue(host)!;
            if (hostName != "localhost" && !System.Net.IPAddress.TryParse(hostName, out _)) throw new InvalidInputException($"--host {hostName}: an IP address or localhost");
            if (parse.GetValue(prefill) < 0) throw new InvalidInputException("--prefill-chunk must be at least 0");
            if (parse.GetValue(batchRows) < 1) throw new InvalidInputException("--max-batch-rows must be at least 1");
            string? key = parse.GetValue(apiKey) ?? (Environment.GetEnvironmentVariable("SHARDPIPE_API_KEY") is { Length: > 0 } k ? k : null);
            if (key is { Length: < 8 }) throw new InvalidInputException("--api-key: use at least 8 characters");
            if (parse.GetValue(protectStatus) && key is null) throw new InvalidInputException("--protect-status needs --api-key (or SHARDPIPE_API_KEY)");
            if (key is null && hostName is not ("127.0.0.1" or "localhost" or "::1"))
                log.LogWarning("serving on {Host} without an API key: anyone who reaches the port can run the model (--api-key or SHARDPIPE_API_KEY)", hostName);
            var load = m.LoadRequest(parse);
            // An embedded cluster takes every admitted request into its pipeline at once, merged up to --max-batch-rows a step.
            string embedded = $"shardpipe.max-in-flight = {parse.GetValue(maxActive)}\nshardpipe.batching.max-rows = {parse.GetValue(batchRows)}";
            if (parse.GetValue(noPrefixCache)) embedded += "\nshardpipe.prefix-cache.enabled = off";
            await using var session = await ClusterSession.ConnectAsync(parse.GetValue(m.Cluster) ?? "embedded:1", parse.GetValue(m.Nodes), log,
                parse.GetValue(m.OffloadFolder), parse.GetValue(CommonOptions.ClientConfig), embedded);
            var options = new ServeSettings
            {
                ModelId = modelId, ModelFolder = load.Model, Host = hostName, Port = p, MaxActive = parse.GetValue(maxActive), MaxQueued = parse.GetValue(maxQueued),
                MaxTokens = parse.GetValue(maxTokens), RequestTimeout = TimeSpan.FromSeconds(parse.GetValue(timeout)), PrefillChunk = parse.GetValue(prefill),
                MaxBatchRows = parse.GetValue(batchRows), ApiKey = key, ProtectStatus = parse.GetValue(protectStatus), Speculate = speculate,
            };
            // The server (and its dashboard) is up first, so the load's progress shows there; requests get 503 until it is done.
            await using var server = await OpenAiServer.StartAsync(options, session, log);
            Console.Error.WriteLine($"dashboard at {server.Address} (loading {modelId})");
            await session.EnsureLoadedAsync(load, log, json: false);
            log.LogInformation("serving {Model} on {Address} (OpenAI API: /v1/models, /v1/completions, /v1/chat/completions; /health, /status, /metrics)", modelId, server.Address);
            Console.Error.WriteLine($"serving {modelId} at {server.Address}v1 (Ctrl+C stops)");
            var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.TrySetResult(); };
            AppDomain.CurrentDomain.ProcessExit += (_, _) => stop.TrySetResult();
            await stop.Task;
            return 0;
        });
        return cmd;
    }
}
