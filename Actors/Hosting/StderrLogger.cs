using Akka.Actor;
using Akka.Event;

namespace ShardPipe.Actors.Hosting;

/// <summary>Akka's log events as single lines on stderr, so a command's stdout carries only its result.</summary>
public sealed class StderrLogger : ReceiveActor
{
    public StderrLogger()
    {
        Receive<InitializeLogger>(_ => Sender.Tell(new LoggerInitialized()));
        Receive<LogEvent>(e =>
        {
            // A peer that left or stopped: routine (departures that matter surface as typed errors naming the node).
            if (e is Error { Cause: { } gone } && gone.GetType().Name == "EndpointDisassociatedException") return;
            if (e is Warning && e.Message?.ToString() is { } w && w.Contains("EndpointDisassociatedException", StringComparison.Ordinal)) return;
            string level = e.LogLevel() switch
            {
                LogLevel.ErrorLevel => "error",
                LogLevel.WarningLevel => "warn",
                LogLevel.InfoLevel => "info",
                _ => "debug",
            };
            string cause = e is Error { Cause: { } ex } ? $" ({ex.GetType().Name}: {ex.Message})" : "";
            string message = e.Message?.ToString() ?? "";
            int stack = message.IndexOf("\n", StringComparison.Ordinal); // Akka puts whole stack traces into some messages
            if (stack >= 0) message = message[..stack].TrimEnd('\r') + " …";
            Console.Error.WriteLine($"{e.Timestamp:HH:mm:ss.fff} {level}: [{e.LogSource}] {message}{cause}");
        });
    }
}
