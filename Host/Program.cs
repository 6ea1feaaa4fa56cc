using ShardPipe.Host.Cli;

return await ShardPipeCli.RunAsync(args);
