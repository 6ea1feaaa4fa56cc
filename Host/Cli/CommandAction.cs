using System.CommandLine;
using Microsoft.Extensions.Logging;
using ShardPipe.Checkpoints;

namespace ShardPipe.Host.Cli;

/// <summary>
/// Runs a command body with the CLI's error contract: a ShardPipe error (or bad argument) becomes one line on
/// stderr and a non-zero exit, with the stack trace only under <c>--verbose</c>.
/// </summary>
public static class CommandAction
{
    public const int ExitBadInput = 2;
    public const int ExitFailure = 1;

    public static void Set(Command command, Func<ParseResult, ILogger, int> body)
    {
        command.SetAction(parse =>
        {
            bool verbose = parse.GetValue(CommonOptions.Verbose);
            using var factory = Logging.CreateFactory(verbose);
            var log = factory.CreateLogger("shardpipe." + command.Name);
            try
            {
                return body(parse, log);
            }
            catch (Exception ex) when (ex is ShardPipeException or FormatException or ArgumentException or NotSupportedException)
            {
                Console.Error.WriteLine($"error: {ex.Message}");
                if (verbose) Console.Error.WriteLine(ex);
                return ExitBadInput;
            }
            catch (Exception ex) when (!verbose)
            {
                Console.Error.WriteLine($"error: {ex.GetType().Name}: {ex.Message}");
                return ExitFailure;
            }
        });
    }
}
