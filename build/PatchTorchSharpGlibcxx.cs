#nullable enable
// MSBuild inline task (RoslynCodeTaskFactory): makes TorchSharp's native library loadable where the
// system libstdc++ lacks GLIBCXX_3.4.32. See TorchSharpNativeFix.targets for the why.
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public class PatchTorchSharpGlibcxx : Task
{
    private const string Wanted = "GLIBCXX_3.4.32";
    private const string Replacement = "GLIBCXX_3.4.30";
    private const uint ShtGnuVerneed = 0x6ffffffe;

    [Required]
    public string Directory { get; set; } = "";

    public override bool Execute()
    {
        if (!System.IO.Directory.Exists(Directory)) return true;
        var targets = System.IO.Directory.GetFiles(Directory, "libLibTorchSharp.so", SearchOption.AllDirectories);
        if (targets.Length == 0) return true;
        string? libstdcxx = FindSystemLibStdCxx();
        if (libstdcxx == null)
        {
            Log.LogMessage(MessageImportance.Normal, "ShardPipe: no system libstdc++.so.6 found; TorchSharp native library left as is.");
            return true;
        }
        if (Contains(File.ReadAllBytes(libstdcxx), Encoding.ASCII.GetBytes(Wanted + "\0")))
        {
            Log.LogMessage(MessageImportance.Normal, "ShardPipe: " + libstdcxx + " provides " + Wanted + "; no patch needed.");
            return true;
        }
        foreach (var path in targets)
        {
            try
            {
                int patched = Patch(path);
                if (patched > 0)
                    Log.LogMessage(MessageImportance.High, "ShardPipe: rewrote " + patched + " " + Wanted + " version need(s) to " + Replacement + " in " + path);
            }
            catch (Exception ex)
            {
                Log.LogError("ShardPipe: cannot patch " + path + ": " + ex.Message);
                return false;
            }
        }
        return true;
    }

    private static string? FindSystemLibStdCxx()
    {
        string[] dirs = { "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                          "/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib" };
        foreach (var d in dirs)
        {
            var p = Path.Combine(d, "libstdc++.so.6");
            if (File.Exists(p)) return p;
        }
        return null;
    }

    private static bool Contains(byte[] hay, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= hay.Length; i++)
        {
            int j = 0;
            while (j < needle.Length && hay[i + j] == needle[j]) j++;
            if (j == needle.Length) return true;
        }
        return false;
    }

    /// <summary>The SysV ELF hash that Elf64_Vernaux.vna_hash must hold for vna_name.</summary>
    public static uint ElfHash(string name)
    {
        uint h = 0;
        foreach (char c in name)
        {
            h = (h << 4) + (byte)c;
            uint g = h & 0xf0000000;
            if (g != 0) h ^= g >> 24;
            h &= ~g;
        }
        return h;
    }

    /// <summary>Rewrites every vernaux entry naming GLIBCXX_3.4.32; returns how many were changed.</summary>
    private static int Patch(string path)
    {
        byte[] b = File.ReadAllBytes(path);
        if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F')
            throw new InvalidDataException("not an ELF file");
        if (b[4] != 2 || b[5] != 1) throw new InvalidDataException("not a little-endian 64-bit ELF file");
        ulong shoff = BitConverter.ToUInt64(b, 0x28);
        ushort shentsize = BitConverter.ToUInt16(b, 0x3A);
        ushort shnum = BitConverter.ToUInt16(b, 0x3C);
        int changed = 0;
        for (int i = 0; i < shnum; i++)
        {
            long sh = checked((long)shoff + (long)i * shentsize);
            uint type = BitConverter.ToUInt32(b, (int)sh + 4);
            if (type != ShtGnuVerneed) continue;
            long offset = (long)BitConverter.ToUInt64(b, (int)sh + 0x18);
            uint link = BitConverter.ToUInt32(b, (int)sh + 0x28);
            long strSh = checked((long)shoff + (long)link * shentsize);
            long strOff = (long)BitConverter.ToUInt64(b, (int)strSh + 0x18);
            long vn = offset;
            while (true)
            {
                ushort cnt = BitConverter.ToUInt16(b, (int)vn + 2);
                uint aux = BitConverter.ToUInt32(b, (int)vn + 8);
                uint next = BitConverter.ToUInt32(b, (int)vn + 12);
                long a = vn + aux;
                for (int k = 0; k < cnt; k++)
                {
                    uint name = BitConverter.ToUInt32(b, (int)a + 8);
                    uint anext = BitConverter.ToUInt32(b, (int)a + 12);
                    int s = (int)(strOff + name);
                    int e = Array.IndexOf(b, (byte)0, s);
                    string str = Encoding.ASCII.GetString(b, s, e - s);
                    if (str == Wanted)
                    {
                        Encoding.ASCII.GetBytes(Replacement, 0, Replacement.Length, b, s);
                        BitConverter.GetBytes(ElfHash(Replacement)).CopyTo(b, (int)a);
                        changed++;
                    }
                    if (anext == 0) break;
                    a += anext;
                }
                if (next == 0) break;
                vn += next;
            }
        }
        if (changed > 0)
        {
            string tmp = path + ".patching";
            File.WriteAllBytes(tmp, b);
            File.Delete(path);
            File.Move(tmp, path);
        }
        return changed;
    }
}
