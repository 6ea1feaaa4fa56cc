using System.CommandLine;
using Microsoft.Extensions.Logging;

namespace ShardPipe.Host.Cli;

/// <summary>
/// Runs a command body with the CLI's error contract: a ShardPipe error (or a bad host config) becomes one line on
/// stderr and exit status 2, anything else exit status 1, with the stack trace only under <c>--verbose</c>.
/// Bodies are async; System.CommandLine awaits them.
/// </summary>
public static class CommandAction
{
    public const int ExitBadInput = 2;
    public const int ExitFailure = 1;

    public static void Set(Command command, Func<ParseResult, ILogger, Task<int>> body)
    {
        command.SetAction(async (parse, _) =>
        {
            bool verbose = parse.GetValue(CommonOptions.Verbose);
            using var factory = Logging.CreateFactory(verbose);
            var log = factory.CreateLogger("shardpipe." + command.Name);
            try
            {
                return await body(parse, log);
            }
            catch (Exception ex) when (ex is ShardPipeException or Akka.Configuration.ConfigurationException)
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

    /// <summary>A body with nothing to await.</summary>
    public static void Set(Command command, Func<ParseResult, ILogger, int> body) => Set(command, (parse, log) => Task.FromResult(body(parse, log)));
}
