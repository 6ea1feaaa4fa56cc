using ShardPipe.Host.Cli;

return ShardPipeCli.Run(args);
