using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Tokenization;
using ShardPipe.Checkpoints;

namespace ShardPipe.Host.Commands;

/// <summary><c>shardpipe generate</c>: greedy decoding with a KV cache in this process.</summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var m = new ModelArguments();
        var ids = new Option<string?>("--input-ids") { Description = "Prompt token ids, rows separated by ';'" };
        var prompt = new Option<string?>("--prompt") { Description = "Prompt text, encoded with the tokenizer in the model folder (instead of --input-ids)" };
        var mask = new Option<string?>("--attention-mask") { Description = "0/1 per token (0 = left padding)" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens to generate per row", DefaultValueFactory = _ => 20 };
        var greedy = new Option<bool>("--greedy") { Description = "Greedy decoding (the default)" };
        var ignoreEos = new Option<bool>("--ignore-eos") { Description = "Do not stop at the end-of-sequence token" };
        var temperature = new Option<double?>("--temperature") { Description = "Sample with this temperature (implies sampling unless --greedy)" };
        var topK = new Option<int?>("--top-k") { Description = "Sample among the K most likely tokens" };
        var topP = new Option<double?>("--top-p") { Description = "Sample from the smallest set of tokens whose probability reaches P" };
        var seed = new Option<long?>("--seed") { Description = "Seed for sampling (the same seed gives the same tokens)" };
        var penalty = new Option<double>("--repetition-penalty") { Description = "HF's repetition_penalty (1.0 = off)", DefaultValueFactory = _ => 1.0 };
        var prefill = new Option<int>("--prefill-chunk") { Description = "On a cluster: prefill the prompt this many positions per step (0 = at once), so that requests running beside it wait at most one chunk" };
        var json = CommonOptions.Json();
        var speculation = new SpeculationOptions();
        var cmd = new Command("generate", "Generate tokens (greedy by default, or sampled), in this process or on a cluster")
            { ids, prompt, mask, maxNew, greedy, ignoreEos, temperature, topK, topP, seed, penalty, prefill, json };
        m.AddTo(cmd);
        speculation.AddTo(cmd);
        CommandAction.Set(cmd, async (parse, log) =>
        {
            ModelTokenizer? tokenizer = null;
            long[][] rows;
            if (parse.GetValue(prompt) is { } text)
            {
                if (parse.GetValue(ids) is not null) throw new InvalidInputException("give --prompt or --input-ids, not both");
                tokenizer = ModelTokenizer.Load(ModelLocator.Locate(parse.GetValue(m.Model)!, new LocateOptions { Revision = parse.GetValue(m.Revision), Subfolder = parse.GetValue(m.Subfolder) }));
                rows = new[] { tokenizer.Encode(text).Ids.Select(i => (long)i).ToArray() };
                if (rows[0].Length == 0) throw new InvalidInputException("--prompt encodes to no tokens");
            }
            else rows = ModelArguments.ParseRows(parse.GetValue(ids) ?? throw new InvalidInputException("give --input-ids or --prompt"), "--input-ids");
            var maskRows = parse.GetValue(mask) is { } ms ? ModelArguments.ParseRows(ms, "--attention-mask") : null;
            int n = parse.GetValue(maxNew);
            if (n < 1) throw new InvalidInputException("--max-new-tokens must be at least 1");
            var sampling = Sampling(parse, greedy, temperature, topK, topP, seed) with { RepetitionPenalty = parse.GetValue(penalty) };
            if (sampling.RepetitionPenalty <= 0) throw new InvalidInputException("--repetition-penalty must be positive");
            int chunk = parse.GetValue(prefill);
            if (chunk < 0) throw new InvalidInputException("--prefill-chunk must be at least 0");
            var speculate = speculation.Read(parse, rows.Length, SpeculationOptions.LocalFolder(parse.GetValue(m.Model)!,
                new LocateOptions { Revision = parse.GetValue(m.Revision), Subfolder = parse.GetValue(m.Subfolder) }));
            if (parse.GetValue(m.Cluster) is { } cluster)
                return await OnCluster(parse, m, cluster, rows, maskRows, n, parse.GetValue(ignoreEos), sampling, chunk, parse.GetValue(json), tokenizer, log, speculate);
            if (chunk > 0) throw new InvalidInputException("--prefill-chunk applies on a cluster (--cluster); in one process the prompt is prefilled at once");
            var sw = Stopwatch.StartNew();
            var model = PreTrainedModel.FromPretrained(parse.GetValue(m.Model)!, m.Options(parse, log));
            double loadS = sw.Elapsed.TotalSeconds;
            ModelArguments.ValidateInputs(model, rows, maskRows, null);
            long positions = model.Config.GetLongOrNull("max_position_embeddings") ?? model.Config.GetLongOrNull("n_positions") ?? long.MaxValue;
            if (ShardPipe.Modeling.Generation.DecodeRule.PastPositions(rows[0].Length, n, positions) is { } tooLong)
                throw new InvalidInputException($"--max-new-tokens: {tooLong}");
            bool asJson = parse.GetValue(json);
            var generation = new GenerationOptions
            {
                MaxNewTokens = n,
                IgnoreEos = parse.GetValue(ignoreEos),
                DoSample = !sampling.Greedy, Temperature = sampling.Temperature, TopK = sampling.TopK, TopP = sampling.TopP, Seed = sampling.Seed,
                RepetitionPenalty = sampling.RepetitionPenalty,
                OnToken = asJson ? null : Live(tokenizer, rows.Length),
            };
            SpeculationCounts? counts = null;
            GenerationResult result;
            var draft = speculate?.DraftModel is { } draftFolder ? PreTrainedModel.FromPretrained(draftFolder) : null;
            if (speculate is not null)
                (result, counts) = SpeculativeGenerator.Generate(model, rows[0], maskRows?[0], generation, speculate.Tokens, draft);
            else result = TokenGenerator.Greedy(model, rows, maskRows, generation);
            if (asJson)
            {
                JsonOut.Print(new JsonObject
                {
                    ["sequences"] = HostJson.Rows(result.Sequences),
                    ["new_tokens"] = result.NewTokens,
                    ["load_s"] = Math.Round(loadS, 4),
                    ["prefill_s"] = Math.Round(result.PrefillSeconds, 4),
                    ["tokens_per_s"] = Math.Round(result.TokensPerSecond, 3),
                    ["hf_device_map"] = HostJson.DeviceMap(model.HfDeviceMap),
                    ["recovered_faults"] = 0,
                    ["speculation"] = SpeculationJson(speculate, counts?.Proposed ?? 0, counts?.Accepted ?? 0),
                    ["text"] = tokenizer is null ? null : new JsonArray(result.Sequences.Select(seq => (JsonNode)JsonValue.Create(tokenizer.Decode(seq.Skip(rows[0].Length), skipSpecialTokens: true))!).ToArray()),
                });
            }
            else
            {
                Console.Error.WriteLine();
                foreach (var s in result.Sequences)
                    Console.WriteLine(tokenizer is null ? string.Join(",", s) : tokenizer.Decode(s, skipSpecialTokens: true));
                Console.WriteLine($"load {loadS:0.00} s, prefill {result.PrefillSeconds:0.000} s, {result.TokensPerSecond:0.0} tokens/s");
            }
            return 0;
        });
        return cmd;
    }

    /// <summary>Generation through the cluster: prefill and decode flow worker to worker; tokens stream back here.</summary>
    /// <summary>Greedy unless a sampling option is given (and --greedy is not); checks the values.</summary>
    private static ShardPipe.Messages.SamplingSettings Sampling(ParseResult parse, Option<bool> greedy, Option<double?> temperature,
        Option<int?> topK, Option<double?> topP, Option<long?> seed)
    {
        double t = parse.GetValue(temperature) ?? 1.0;
        int k = parse.GetValue(topK) ?? 0;
        double p = parse.GetValue(topP) ?? 1.0;
        if (t < 0) throw new InvalidInputException("--temperature must be ≥ 0");
        if (k < 0) throw new InvalidInputException("--top-k must be ≥ 0");
        if (p <= 0 || p > 1) throw new InvalidInputException("--top-p must be in (0, 1]");
        bool sample = !parse.GetValue(greedy) && (parse.GetValue(temperature) is not null || parse.GetValue(topK) is not null
                                                  || parse.GetValue(topP) is not null || parse.GetValue(seed) is not null);
        return new ShardPipe.Messages.SamplingSettings(!sample, t, k, p, parse.GetValue(seed) ?? 0);
    }

    /// <summary>generate --json's speculation report: method, draft tokens proposed and accepted (null without speculation).</summary>
    private static JsonObject? SpeculationJson(ShardPipe.Messages.SpeculationSettings? speculate, int proposed, int accepted) => speculate is null ? null : new JsonObject
    {
        ["method"] = speculate.Method,
        ["draft_model"] = speculate.DraftModel,
        ["num_speculative_tokens"] = speculate.Tokens,
        ["proposed_tokens"] = proposed,
        ["accepted_tokens"] = accepted,
        ["acceptance_rate"] = proposed > 0 ? Math.Round((double)accepted / proposed, 4) : 0,
    };

    /// <summary>Shows tokens on stderr as they come: text (streamed, whole characters only) for one row with a tokenizer, else ids.</summary>
    private static Action<long[]> Live(ModelTokenizer? tokenizer, int rows)
    {
        if (tokenizer is null || rows != 1) return t => Console.Error.Write($"{string.Join(",", t)} ");
        var stream = tokenizer.Stream();
        return t => Console.Error.Write(stream.Add(t));
    }

    private static async Task<int> OnCluster(ParseResult parse, ModelArguments m, string cluster, long[][] rows, long[][]? mask, int n,
        bool ignoreEos, ShardPipe.Messages.SamplingSettings sampling, int prefillChunk, bool json, ModelTokenizer? tokenizer, ILogger log,
        ShardPipe.Messages.SpeculationSettings? speculate)
    {
        await using var session = await ClusterSession.ConnectAsync(cluster, parse.GetValue(m.Nodes), log, parse.GetValue(m.OffloadFolder), parse.GetValue(CommonOptions.ClientConfig));
        var (stages, map, loadS) = await session.EnsureLoadedAsync(m.LoadRequest(parse), log, json);
        var outcome = await session.Client.RunAsync(new ShardPipe.Messages.Generate(Guid.NewGuid().ToString("N"), rows, mask, n, ignoreEos,
                sampling, PrefillChunk: prefillChunk, Speculate: speculate), stages, TimeSpan.FromSeconds(120),
            json ? null : Live(tokenizer, rows.Length));
        var sequences = rows.Select((r, b) => r.Concat(outcome.NewTokens[b]).ToArray()).ToArray();
        if (json)
        {
            JsonOut.Print(new JsonObject
            {
                ["sequences"] = HostJson.Rows(sequences),
                ["new_tokens"] = outcome.Steps,
                ["load_s"] = Math.Round(loadS, 4),
                ["prefill_s"] = Math.Round(outcome.PrefillSeconds, 4),
                ["tokens_per_s"] = Math.Round(outcome.TokensPerSecond, 3),
                ["hf_device_map"] = map,
                ["recovered_faults"] = outcome.RecoveredFaults,
                ["speculation"] = SpeculationJson(speculate, outcome.Proposed, outcome.Accepted),
                ["text"] = tokenizer is null ? null : new JsonArray(outcome.NewTokens.Select(t => (JsonNode)JsonValue.Create(tokenizer.Decode(t, skipSpecialTokens: true))!).ToArray()),
            });
        }
        else
        {
            Console.Error.WriteLine();
            Console.WriteLine($"hf_device_map: {map.ToJsonString()}");
            foreach (var s in sequences) Console.WriteLine(tokenizer is null ? string.Join(",", s) : tokenizer.Decode(s, skipSpecialTokens: true));
            Console.WriteLine($"load {loadS:0.00} s, prefill {outcome.PrefillSeconds:0.000} s, {outcome.TokensPerSecond:0.0} tokens/s");
        }
        return 0;
    }
}
