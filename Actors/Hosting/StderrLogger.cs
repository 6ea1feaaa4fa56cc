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
            string level = e.LogLevel() switch
            {
                LogLevel.ErrorLevel => "error",
                LogLevel.WarningLevel => "warn",
                LogLevel.InfoLevel => "info",
                _ => "debug",
            };
            string cause = e is Error { Cause: { } ex } ? $" ({ex.GetType().Name}: {ex.Message})" : "";
            Console.Error.WriteLine($"{e.Timestamp:HH:mm:ss} {level}: [{e.LogSource}] {e.Message}{cause}");
        });
    }
}
