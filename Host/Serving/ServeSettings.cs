namespace ShardPipe.Host.Serving;

/// <summary>
/// Everything <c>shardpipe serve</c> runs with, by name, defaults in one place: the model, where to listen, admission
/// (running and queued requests), the max_tokens cap, and every timeout the server uses.
/// </summary>
public sealed record ServeSettings
{
    public required string ModelId { get; init; }
    public required string ModelFolder { get; init; }
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 = any free port (<see cref="OpenAiServer.Address"/> says which).</summary>
    public int Port { get; init; } = 8000;
    public int MaxActive { get; init; } = 16;
    public int MaxQueued { get; init; } = 64;
    public int MaxTokens { get; init; } = 4096;
    /// <summary>Positions of a long prompt prefilled per step (chunked prefill; 0 = all at once).</summary>
    public int PrefillChunk { get; init; } = 128;
    public int MaxBatchRows { get; init; } = 32;
    /// <summary>Speculative decoding for every request (--speculate, --num-speculative-tokens); null = off.</summary>
    public ShardPipe.Messages.SpeculationSettings? Speculate { get; init; }
    /// <summary>How long a request may run before it ends with a 504 (or an error event when streamed).</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(600);
    /// <summary>How long a running request may go without a step before it counts as stalled.</summary>
    public TimeSpan StallTimeout { get; init; } = TimeSpan.FromSeconds(120);
    /// <summary>How long /health, /status and /metrics wait for the coordinator.</summary>
    public TimeSpan StatusTimeout { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>How long a generation request waits for the coordinator to say the model is ready.</summary>
    public TimeSpan ReadyTimeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>
    /// When set, /v1/*, /tokenize and /detokenize need <c>Authorization: Bearer KEY</c> (401 otherwise), as vLLM's
    /// --api-key; /health stays open. Null = no key (the server should then listen on loopback only).
    /// </summary>
    public string? ApiKey { get; init; }
    /// <summary>With an API key: /status, /metrics and the dashboard need it too (by default they are open).</summary>
    public bool ProtectStatus { get; init; }
    /// <summary>The model's vocabulary size: token ids given by a client must be below it (400 otherwise).</summary>
    public long VocabSize { get; init; } = long.MaxValue;
    /// <summary>The largest request body accepted (413 beyond).</summary>
    public long MaxBodyBytes { get; init; } = 4 << 20;
    /// <summary>
    /// Test hook: when set, generation does not run on the cluster; the model's output text is what this returns for
    /// the prompt text (streamed in small pieces). Everything else (prompt building, tool-call parsing, the response
    /// shapes) is the real path. Never set by the CLI.
    /// </summary>
    public Func<string, string>? InjectedOutput { get; init; }
}
