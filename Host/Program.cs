using ShardPipe.Host.Cli;

// Before any tensor exists: keep freed native memory for reuse (see NativeAllocator; SHARDPIPE_MALLOC_KEEP=0 turns it off).
ShardPipe.Modeling.Core.NativeAllocator.KeepFreedMemory();
// Before libtorch loads libgomp, which reads it once: its OpenMP threads sleep between regions instead of spinning on
// a core our kernels' threads need (see OpenMpWaitPolicy; a user's OMP_WAIT_POLICY is kept).
ShardPipe.Modeling.Core.OpenMpWaitPolicy.Apply();
return await ShardPipeCli.RunAsync(args);
