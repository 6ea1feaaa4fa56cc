using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using ShardPipe.Checkpoints;
using ShardPipe.Host.Cli;
using ShardPipe.Modeling.Tokenization;

namespace ShardPipe.Host.Bench;

/// <summary>
/// <c>shardpipe bench tokenizer-load --model M</c>: how long loading the folder's tokenizer takes (tokenizer.json parsed,
/// vocabulary and merges built, added tokens and config read), beside the baseline of parsing the same tokenizer.json
/// into a JsonNode tree (what a plain DOM load costs before any tokenizer is built). Median, min and max of the rounds.
/// </summary>
public static class TokenizerLoadBench
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "A folder with a tokenizer (e.g. Gemma 3's 33 MB tokenizer.json)", Required = true };
        var rounds = new Option<int>("--rounds") { Description = "Rounds (median, min and max reported)", DefaultValueFactory = _ => 5 };
        var json = CommonOptions.Json();
        var cmd = new Command("tokenizer-load", "Time to load a model folder's tokenizer, beside a plain JSON DOM parse of tokenizer.json") { model, rounds, json };
        CommandAction.Set(cmd, (parse, log) =>
        {
            bool asJson = parse.GetValue(json);
            string folder = ModelLocator.Locate(parse.GetValue(model)!);
            string file = Path.Combine(folder, "tokenizer.json");
            int n = Math.Max(1, parse.GetValue(rounds));
            ModelTokenizer.Load(folder); // warm the page cache and the JIT
            var ours = new List<double>();
            var dom = new List<double>();
            int vocab = 0;
            for (int r = 0; r < n; r++)
            {
                var clock = Stopwatch.StartNew();
                var tok = ModelTokenizer.Load(folder);
                ours.Add(clock.Elapsed.TotalMilliseconds);
                vocab = tok.SpecialTokens.Count;
                if (File.Exists(file))
                {
                    clock.Restart();
                    _ = JsonNode.Parse(File.ReadAllText(file));
                    dom.Add(clock.Elapsed.TotalMilliseconds);
                }
            }
            static double Median(List<double> x) { var s = x.Order().ToList(); return s.Count == 0 ? 0 : s[s.Count / 2]; }
            long bytes = File.Exists(file) ? new FileInfo(file).Length : 0;
            BenchSupport.Say(asJson, $"bench tokenizer-load: {folder} ({ByteSize.Format(bytes)} tokenizer.json), {n} rounds");
            BenchSupport.Say(asJson, $"  ModelTokenizer.Load: median {Median(ours):0} ms (min {ours.Min():0}, max {ours.Max():0})");
            if (dom.Count > 0) BenchSupport.Say(asJson, $"  baseline JsonNode.Parse of tokenizer.json: median {Median(dom):0} ms");
            BenchSupport.Finish(new JsonObject
            {
                ["bench"] = "tokenizer-load",
                ["bytes"] = bytes,
                ["rounds"] = n,
                ["load_ms_median"] = Math.Round(Median(ours), 1),
                ["load_ms_min"] = Math.Round(ours.Min(), 1),
                ["load_ms_max"] = Math.Round(ours.Max(), 1),
                ["baseline_dom_ms_median"] = dom.Count > 0 ? Math.Round(Median(dom), 1) : null,
                ["special_tokens"] = vocab,
            });
            return 0;
        });
        return cmd;
    }
}
