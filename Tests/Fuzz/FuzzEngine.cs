using System.Diagnostics;
using System.Text;
using FsCheck;
using FsCheck.Fluent;

namespace ShardPipe.Tests.Fuzz;

/// <summary>
/// Mutational fuzzing driven by FsCheck: each case is one FsCheck-generated seed, from which a seed input of the
/// target's corpus and one to eight mutations are drawn (bit flips, interesting bytes, inserts, deletions, copies,
/// truncation, splices of another input, and in text inputs numbers and literals swapped for hostile ones). A case
/// passes when the parser returns data (which the target may check further) or throws a typed
/// <see cref="ShardPipeException"/> (or what the target names as its clean end); anything else — an unexpected
/// exception type, a case that allocates far beyond its input, or one that takes seconds — is a crash, reported with
/// the seed that replays it. The case count is <c>SHARDPIPE_FUZZ_CASES</c> (the suite's default is small; ops/fuzz.sh
/// runs many), and every run appends "target cases crashes seconds" to <c>SHARDPIPE_FUZZ_REPORT</c> when set.
/// </summary>
public static class FuzzEngine
{
    public static int Cases(int divisor = 1) =>
        Math.Max(20, (int.TryParse(Environment.GetEnvironmentVariable("SHARDPIPE_FUZZ_CASES"), out int n) && n > 0 ? n : 300) / divisor);

    private static readonly byte[] Interesting = { 0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, (byte)'"', (byte)'{', (byte)'[', (byte)'-', (byte)'9', 0xC0, 0xDF };

    private static readonly string[] HostileLiterals =
    {
        "-1", "0", "1e9", "1e308", "-1e308", "4294967296", "2147483648", "9223372036854775807", "9223372036854775808",
        "18446744073709551616", "1.5", "NaN", "\"2\"", "\"\"", "null", "[]", "{}", "true", "[1]", "\"../../etc/passwd\"",
        "\"" + new string('A', 300) + "\"", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    };

    /// <summary>One mutant of the corpus, fully determined by <paramref name="seed"/>.</summary>
    public static byte[] Mutate(IReadOnlyList<byte[]> corpus, int seed, bool text)
    {
        var rng = new Random(seed);
        var bytes = new List<byte>(corpus[rng.Next(corpus.Count)]);
        int n = 1 + rng.Next(8);
        for (int i = 0; i < n; i++)
        {
            int at = bytes.Count == 0 ? 0 : rng.Next(bytes.Count);
            switch (rng.Next(text ? 10 : 8))
            {
                case 0 when bytes.Count > 0: bytes[at] ^= (byte)(1 << rng.Next(8)); break;
                case 1 when bytes.Count > 0: bytes[at] = Interesting[rng.Next(Interesting.Length)]; break;
                case 2: bytes.InsertRange(at, Enumerable.Range(0, 1 + rng.Next(16)).Select(_ => (byte)rng.Next(256))); break;
                case 3 when bytes.Count > 0: bytes.RemoveRange(at, Math.Min(bytes.Count - at, 1 + rng.Next(32))); break;
                case 4 when bytes.Count > 0:
                    {
                        int len = Math.Min(bytes.Count - at, 1 + rng.Next(64));
                        bytes.InsertRange(rng.Next(bytes.Count), bytes.GetRange(at, len));
                        break;
                    }
                case 5 when bytes.Count > 0: bytes.RemoveRange(at, bytes.Count - at); break;
                case 6:
                    {
                        var other = corpus[rng.Next(corpus.Count)];
                        if (other.Length == 0) break;
                        int from = rng.Next(other.Length);
                        bytes.InsertRange(at, other.Skip(from).Take(1 + rng.Next(64)));
                        break;
                    }
                case 7 when bytes.Count >= 4: // a little-endian 32-bit field set to an edge value
                    {
                        uint v = new uint[] { 0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000 }[rng.Next(7)];
                        int p = Math.Min(at, bytes.Count - 4);
                        for (int k = 0; k < 4; k++) bytes[p + k] = (byte)(v >> (8 * k));
                        break;
                    }
                case 8 or 9: ReplaceToken(bytes, rng); break;
            }
        }
        return bytes.ToArray();
    }

    /// <summary>In JSON-like text: swaps a number, string or literal for a hostile one.</summary>
    private static void ReplaceToken(List<byte> bytes, Random rng)
    {
        string s = Encoding.UTF8.GetString(bytes.ToArray());
        var tokens = System.Text.RegularExpressions.Regex.Matches(s, "-?\\d+(\\.\\d+)?([eE][-+]?\\d+)?|\"[^\"]{0,40}\"|true|false|null");
        if (tokens.Count == 0) return;
        var m = tokens[rng.Next(tokens.Count)];
        s = s[..m.Index] + HostileLiterals[rng.Next(HostileLiterals.Length)] + s[(m.Index + m.Length)..];
        bytes.Clear();
        bytes.AddRange(Encoding.UTF8.GetBytes(s));
    }

    /// <summary>
    /// Runs <paramref name="cases"/> FsCheck cases of <paramref name="target"/> over mutants of <paramref name="corpus"/>.
    /// <paramref name="target"/> returns false when the data it got is wrong (a crash too); <paramref name="cleanEnd"/>
    /// says which non-ShardPipe exceptions are a clean end for this parser (e.g. a stream that ends mid-frame).
    /// </summary>
    public static void Run(string name, IReadOnlyList<byte[]> corpus, Func<byte[], bool> target, int cases, bool text = false,
        Func<Exception, bool>? cleanEnd = null, long allocationSlack = 64L << 20)
    {
        var sw = Stopwatch.StartNew();
        int ran = 0;
        string? crash = null;
        bool Case(int seed)
        {
            ran++;
            var input = Mutate(corpus, seed, text);
            long before = GC.GetAllocatedBytesForCurrentThread();
            var t = Stopwatch.StartNew();
            try
            {
                if (!target(input)) crash = $"seed {seed}: the parser returned wrong data for input {Show(input)}";
            }
            catch (Exception ex) when (ex is ShardPipeException || cleanEnd?.Invoke(ex) == true) { }
            catch (Exception ex)
            {
                crash = $"seed {seed}: {ex.GetType().Name}: {ex.Message}\n{ex.StackTrace}";
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (crash is null && allocated > allocationSlack + 64L * input.Length)
                crash = $"seed {seed}: {allocated} bytes allocated for an input of {input.Length}";
            if (crash is null && t.Elapsed > TimeSpan.FromSeconds(5))
                crash = $"seed {seed}: took {t.Elapsed.TotalSeconds:0.0} s";
            return crash is null;
        }
        var property = Prop.ForAll(Arb.From(Gen.Choose(int.MinValue, int.MaxValue)), (Func<int, bool>)Case);
        string? failure = null;
        try
        {
            Check.One(Config.QuickThrowOnFailure.WithMaxTest(cases).WithQuietOnSuccess(true), property);
        }
        catch (Exception ex) { failure = ex.Message; }
        finally
        {
            Report(name, ran, crash is null && failure is null ? 0 : 1, sw.Elapsed.TotalSeconds);
        }
        Assert.True(crash is null && failure is null, $"fuzz {name}: {crash ?? failure}");
    }

    private static string Show(byte[] input) =>
        input.Length > 600 ? Convert.ToHexString(input, 0, 300) + "…" : Encoding.UTF8.GetString(input).Replace("\n", "\\n");

    private static void Report(string name, int cases, int crashes, double seconds)
    {
        if (Environment.GetEnvironmentVariable("SHARDPIPE_FUZZ_REPORT") is not { Length: > 0 } path) return;
        lock (typeof(FuzzEngine))
            File.AppendAllText(path, $"{name} {cases} {crashes} {seconds:0.0}\n");
    }
}
