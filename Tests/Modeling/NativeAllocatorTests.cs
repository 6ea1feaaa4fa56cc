using ShardPipe.Modeling.Core;

namespace ShardPipe.Tests.Modeling;

/// <summary>The allocator settings the CLI applies at start take on glibc (mallopt accepts each value) and are off with the variable set to 0.</summary>
public class NativeAllocatorTests
{
    [Fact]
    public void Glibc_accepts_the_settings_and_the_variable_turns_them_off()
    {
        string? before = Environment.GetEnvironmentVariable(NativeAllocator.EnvironmentVariable);
        try
        {
            Environment.SetEnvironmentVariable(NativeAllocator.EnvironmentVariable, "0");
            Assert.False(NativeAllocator.KeepFreedMemory());
            Environment.SetEnvironmentVariable(NativeAllocator.EnvironmentVariable, null);
            bool glibc = OperatingSystem.IsLinux() && File.Exists("/usr/lib/x86_64-linux-gnu/libc.so.6");
            if (glibc) Assert.True(NativeAllocator.KeepFreedMemory(), "mallopt refused a value (the mmap threshold must stay ≤ 32 MB on 64-bit glibc)");
        }
        finally
        {
            Environment.SetEnvironmentVariable(NativeAllocator.EnvironmentVariable, before);
        }
    }
}
