using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ShardPipe.Host.Cli;

/// <summary>Writes a command's JSON result as exactly one line on stdout.</summary>
public static class JsonOut
{
    private static readonly JsonSerializerOptions Options = new()
    {
        WriteIndented = false,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    public static void Print(JsonObject result)
    {
        var stdout = Console.OpenStandardOutput();
        var bytes = Encoding.UTF8.GetBytes(result.ToJsonString(Options) + "\n");
        stdout.Write(bytes);
        stdout.Flush();
    }
}
