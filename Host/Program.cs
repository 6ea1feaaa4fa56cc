using ShardPipe.Host.Cli;

// Before any tensor exists: keep freed native memory for reuse (see NativeAllocator; SHARDPIPE_MALLOC_KEEP=0 turns it off).
ShardPipe.Modeling.Core.NativeAllocator.KeepFreedMemory();
return await ShardPipeCli.RunAsync(args);
