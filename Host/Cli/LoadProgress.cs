using Spectre.Console;
using ShardPipe.Checkpoints;
using ShardPipe.Messages;

namespace ShardPipe.Host.Cli;

/// <summary>
/// Load progress on stderr: one live Spectre.Console bar per device on a terminal; plain lines (tensors, bytes,
/// MB/s) when stderr is redirected or the command prints JSON, so logs and pipes stay line-oriented.
/// </summary>
public sealed class LoadProgress
{
    private readonly bool _live;

    public LoadProgress(bool json) => _live = !json && !Console.IsErrorRedirected;

    /// <summary>Runs <paramref name="load"/>, giving it the callback that draws each device's reports.</summary>
    public async Task<T> RunAsync<T>(Func<Action<SliceProgress>, Task<T>> load)
    {
        var started = DateTime.UtcNow;
        if (!_live) return await load(p => Console.Error.WriteLine(Plain(p, started)));
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        return await console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .StartAsync(async ctx =>
            {
                var tasks = new Dictionary<string, ProgressTask>();
                void Report(SliceProgress p)
                {
                    ProgressTask task;
                    lock (tasks)
                        if (!tasks.TryGetValue(p.WorkerPath, out task!))
                            tasks[p.WorkerPath] = task = ctx.AddTask(Markup.Escape(p.WorkerPath), maxValue: Math.Max(1, p.TensorsTotal));
                    task.Description = Markup.Escape($"{p.WorkerPath} {p.TensorsDone}/{p.TensorsTotal} tensors, {ByteSize.Format(p.BytesDone)}");
                    task.Value = p.TensorsDone;
                }
                return await load(Report);
            });
    }

    private static string Plain(SliceProgress p, DateTime started)
    {
        double secs = Math.Max(1e-3, (DateTime.UtcNow - started).TotalSeconds);
        return $"  {p.WorkerPath}: {p.TensorsDone}/{p.TensorsTotal} tensors, {ByteSize.Format(p.BytesDone)} at {p.BytesDone / secs / 1e6:0.0} MB/s";
    }
}
