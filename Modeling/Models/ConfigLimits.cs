using ShardPipe.Modeling.Core;
using ShardPipe.Checkpoints;

namespace ShardPipe.Modeling.Models;

/// <summary>
/// Sanity limits on the sizes a config.json sets, checked before any module is built or any memory allocated: a
/// hostile or broken config (num_hidden_layers 1e9, a GPT-2 n_positions whose causal mask would be terabytes) is a
/// format error naming the file and field, never a hang or an out-of-memory. The limits sit far above any released
/// model of the supported families.
/// </summary>
public static class ConfigLimits
{
    private static readonly Dictionary<string, long> Max = new(StringComparer.Ordinal)
    {
        ["num_hidden_layers"] = 1024, ["n_layer"] = 1024,
        ["hidden_size"] = 65536, ["n_embd"] = 65536,
        ["num_attention_heads"] = 1024, ["n_head"] = 1024, ["num_key_value_heads"] = 1024, ["head_dim"] = 4096,
        ["intermediate_size"] = 1L << 20, ["n_inner"] = 1L << 20,
        ["vocab_size"] = 1L << 22,
        ["max_position_embeddings"] = 1L << 20,
        ["n_positions"] = 32768, // GPT-2 keeps an n_positions² causal mask: 1 GiB at this limit
        ["sliding_window"] = 1L << 20,
    };

    /// <summary>Checks every limited field the config sets (numbers must be integers within 1..limit).</summary>
    public static void Check(PretrainedConfig config)
    {
        string file = config.SourcePath ?? "config.json";
        foreach (var (field, limit) in Max)
        {
            if (!config.Has(field) || config.Values[field] is null) continue;
            if (config.Values[field] is not System.Text.Json.Nodes.JsonValue v || v.GetValueKind() != System.Text.Json.JsonValueKind.Number
                || !double.TryParse(v.ToJsonString(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double d) || d != Math.Floor(d))
                throw new CheckpointFormatException(file, null, $"{field} must be an integer, not {config.Values[field]!.ToJsonString()}");
            if (d < 1 || d > limit)
                throw new CheckpointFormatException(file, null, $"{field} {d:0} is outside the supported range 1..{limit}");
        }
    }
}
