using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Actors.Client;
using ShardPipe.Checkpoints;
using ShardPipe.Checkpoints.Synthetic;
using ShardPipe.Host.Cli;
using ShardPipe.Messages;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench recovery</c>: three <c>shardpipe node</c> processes serve a generated ~134M-parameter Llama; a
/// long greedy generation runs once fault-free, then again while one node process is SIGKILLed mid-way. Reports
/// whether the tokens are equal, the time from the kill to the next token the client receives (the resumed
/// request's first) and to the end, and the decode speed before and after the recovery; then the killed node rejoins
/// and is rebalanced onto and drained live (<see cref="MoveBench"/>: <c>rebalance_s</c>, <c>drain_s</c>).
/// </summary>
public static class RecoveryBench
{
    public static Command Create()
    {
        var tokens = new Option<int>("--tokens") { Description = "New tokens per generation", DefaultValueFactory = _ => 200 };
        var victim = new Option<int>("--kill-node") { Description = "The node killed mid-way (1 holds the coordinator)", DefaultValueFactory = _ => 2 };
        var json = CommonOptions.Json();
        var cmd = new Command("recovery", "Kill one of three node processes mid-generation: same tokens? time to resume and to finish") { tokens, victim, json };
        CommandAction.Set(cmd, (parse, log) => Run(parse.GetValue(tokens), parse.GetValue(victim), parse.GetValue(json), log));
        return cmd;
    }

    private static async Task<int> Run(int n, int victim, bool asJson, ILogger log)
    {
        if (n < 20) throw new InvalidInputException("--tokens must be at least 20");
        if (victim is < 1 or > 3) throw new InvalidInputException("--kill-node must be 1, 2 or 3");
        string folder = BenchSupport.GeneratedModel("llama-125m", SyntheticLlamaSpec.Llama125M, log);
        int threads = Math.Max(1, Environment.ProcessorCount / 3);
        using var nodes = new NodeProcesses(3, _ => $"shardpipe {{ devices = [ {{ device = cpu, budget = \"4GiB\" }} ], compute-threads = {threads} }}\nakka.loglevel = INFO");
        await using var client = ShardPipeClient.Connect(ContactPoints.Parse(nodes.Contacts));
        await client.WaitForNodesAsync(3, TimeSpan.FromMinutes(2));
        var loaded = await client.LoadAsync(new LoadModel(Guid.NewGuid().ToString("N"), folder, null, "float32", "balanced", null, null), TimeSpan.FromMinutes(10));
        BenchSupport.Say(asJson, $"bench recovery: {folder} on 3 node processes ({string.Join(", ", loaded.Devices.Select(d => $"{d.Device} {ByteSize.Format(d.LoadedBytes)}"))})");
        var prompt = new[] { new long[] { 1, 306, 4966, 304, 5434, 278, 3186, 29889 } };
        Generate Request() => new(Guid.NewGuid().ToString("N"), prompt, null, n, true, new SamplingSettings(true, 0, 0, 1, 0));

        await client.RunAsync(Request() with { MaxNewTokens = 8 }, loaded.Stages, TimeSpan.FromSeconds(60)); // warm-up
        var clean = await client.RunAsync(Request(), loaded.Stages, TimeSpan.FromSeconds(120));
        BenchSupport.Say(asJson, $"  fault-free: {n} tokens, {clean.TokensPerSecond:0.0} tokens/s");

        var arrivals = new List<double>();
        var clock = Stopwatch.StartNew();
        var third = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = client.RunAsync(Request(), loaded.Stages, TimeSpan.FromSeconds(120), _ =>
        {
            lock (arrivals)
            {
                arrivals.Add(clock.Elapsed.TotalSeconds);
                if (arrivals.Count == n / 3) third.TrySetResult();
            }
        });
        await third.Task.WaitAsync(TimeSpan.FromMinutes(2));
        double killedAt = clock.Elapsed.TotalSeconds;
        var killedAtUtc = DateTime.UtcNow;
        nodes.Kill(victim);
        log.LogInformation("killed node-{Node} after {Tokens} tokens", victim, n / 3);
        var outcome = await run;
        double doneAt = clock.Elapsed.TotalSeconds;
        double[] times;
        lock (arrivals) times = arrivals.ToArray();
        // The resumed request's first token is the one after the longest gap following the kill (tokens already in
        // flight when the node died may still arrive just after it).
        int resumeIndex = Enumerable.Range(1, times.Length - 1).Where(i => times[i] > killedAt).MaxBy(i => times[i] - times[i - 1]);
        double resumedAt = times[resumeIndex];
        int after = times.Length - resumeIndex;
        double afterRate = after > 1 ? (after - 1) / (times[^1] - resumedAt) : 0;
        bool equal = clean.NewTokens.Zip(outcome.NewTokens).All(p => p.First.SequenceEqual(p.Second));
        BenchSupport.Say(asJson, $"  node-{victim} killed after {n / 3} tokens: resumed {resumedAt - killedAt:0.00} s later, done {doneAt - killedAt:0.00} s after the kill; " +
                                 $"tokens {(equal ? "equal" : "DIFFERENT")}, {afterRate:0.0} tokens/s after, {outcome.RecoveredFaults} fault(s) survived");
        // Where the seconds went (the survivors' logs), and the client's own last step: the resumed request's first token.
        var timeline = FailoverTimeline.From(Enumerable.Range(1, 3).Where(i => i != victim).SelectMany(nodes.Log), killedAtUtc);
        timeline["first_token"] = Math.Round(resumedAt - killedAt, 3);
        BenchSupport.Say(asJson, $"  timeline (s after the kill): {string.Join(", ", timeline.Select(kv => $"{kv.Key} {kv.Value}"))}");
        // Live moves: the killed node rejoins and takes layers (rebalance), then is drained; both during a generation.
        var (moves, movesEqual) = await MoveBench.Run(nodes, client, victim, n, clean.NewTokens, Request, asJson, log);
        var result = new JsonObject
        {
            ["bench"] = "recovery",
            ["killed_node"] = $"node-{victim}",
            ["tokens"] = n,
            ["tokens_equal"] = equal,
            ["recovered_faults"] = outcome.RecoveredFaults,
            ["fault_to_resume_s"] = Math.Round(resumedAt - killedAt, 3),
            ["fault_to_done_s"] = Math.Round(doneAt - killedAt, 3),
            ["fault_free_tokens_per_s"] = Math.Round(clean.TokensPerSecond, 2),
            ["after_recovery_tokens_per_s"] = Math.Round(afterRate, 2),
        };
        // node-1 is the oldest: it holds the coordinator (and the first stage).
        if (victim == 1) result["coordinator_fault_to_resume_s"] = Math.Round(resumedAt - killedAt, 3);
        result["timeline"] = timeline;
        foreach (var (key, value) in moves.ToList()) { moves.Remove(key); result[key] = value; }
        BenchSupport.Finish(result);
        return equal && movesEqual ? 0 : 1;
    }
}
