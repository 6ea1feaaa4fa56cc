using System.Text.Json.Nodes;
using ShardPipe.Modeling.Generation;
using ShardPipe.Modeling.Loading;
using ShardPipe.Modeling.Models;
using ShardPipe.Tests.Checkpoints;
using ShardPipe.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace ShardPipe.Tests.Modeling;

/// <summary>Every reference model, loaded in one process, gives HF's logits (1e-4) and greedy tokens.</summary>
public class ReferenceModelTests
{
    public static TheoryData<string, string> ModelsAndAttention()
    {
        var d = new TheoryData<string, string>();
        foreach (var m in TestPaths.ModelNames)
            foreach (var a in new[] { "sdpa", "eager" })
                d.Add(m, a);
        return d;
    }

    internal static CausalLMModel Load(ReferenceData r, string? dtype = "float32", AttnImplementation attn = AttnImplementation.Sdpa) =>
        PreTrainedModel.FromPretrained(r.Folder, new FromPretrainedOptions { Variant = r.Variant, DType = dtype, AttnImplementation = attn });

    [Theory]
    [MemberData(nameof(ModelsAndAttention))]
    public void Forward_matches_hugging_face_logits(string name, string attn)
    {
        var r = new ReferenceData(name);
        var model = Load(r, attn: attn == "eager" ? AttnImplementation.Eager : AttnImplementation.Sdpa);
        AssertForwardMatches(model, r, name);
    }

    /// <summary>Every forward case's last logits (and the single row's logits at every position) within 1e-4, argmax equal.</summary>
    internal static void AssertForwardMatches(CausalLMModel model, ReferenceData r, string what)
    {
        foreach (var c in r.ForwardCases)
        {
            var ids = ReferenceData.Ints(c["input_ids"]);
            var mask = c["attention_mask"] is JsonArray ? ReferenceData.Ints(c["attention_mask"]) : null;
            var pos = c["position_ids"] is JsonArray ? ReferenceData.Ints(c["position_ids"]) : null;
            using var scope = NewDisposeScope();
            var logits = model.Forward(Tensor2(ids), mask is null ? null : Tensor2(mask), pos is null ? null : Tensor2(pos));
            var expected = ReferenceData.Doubles(c["last_logits"]!);
            var argmax = ((JsonArray)c["argmax"]!).Select(x => x!.GetValue<long>()).ToArray();
            for (int b = 0; b < ids.Length; b++)
            {
                var row = logits[b, ids[b].Length - 1].data<float>().ToArray();
                AssertClose(expected[b], row, 1e-4, $"{what}/{c["name"]} row {b}");
                Assert.Equal(argmax[b], (long)Array.IndexOf(row, row.Max()));
            }
            if (c["logits_all"] is JsonArray all)
            {
                var rows = ReferenceData.Doubles(all[0]!);
                for (int t = 0; t < rows.Length; t++)
                    AssertClose(rows[t], logits[0, t].data<float>().ToArray(), 1e-4, $"{what}/{c["name"]} t={t}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(ShardingTests.ReferenceModels), MemberType = typeof(ShardingTests))]
    public void Greedy_generation_matches_hugging_face(string name)
    {
        var r = new ReferenceData(name);
        var model = Load(r);
        foreach (var c in r.GenerateCases)
            Assert.Equal(ReferenceData.Ints(c["sequences"]), ReferenceData.Greedy(model, c));
    }

    internal static Tensor Tensor2(long[][] rows) => tensor(rows.SelectMany(r => r).ToArray(), new long[] { rows.Length, rows[0].Length });

    internal static void AssertClose(double[] expected, float[] actual, double tol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double worst = 0;
        int at = -1;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = Math.Abs(expected[i] - actual[i]);
            if (d > worst) { worst = d; at = i; }
        }
        Assert.True(worst <= tol, $"{what}: max |Δ| = {worst:g4} at index {at} (expected {(at >= 0 ? expected[at] : 0)}, got {(at >= 0 ? actual[at] : 0)})");
    }
}
