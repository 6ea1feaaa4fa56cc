using System.Runtime.InteropServices;
using System.Text;

namespace ShardPipe.Modeling.Tokenization;

/// <summary>
/// Unicode normalization (NFC, NFD, NFKC, NFKD) as tokenizer.json's normalizers apply it. The build runs with
/// InvariantGlobalization, where .NET's <c>string.Normalize</c> leaves non-ASCII text as it is, so this calls the
/// system's ICU (libicuuc, unorm2_*) directly; ASCII text is already normalized in every form and needs nothing.
/// Without ICU a tokenizer that needs it is refused when it meets non-ASCII text, never silently different.
/// </summary>
public static class UnicodeNormalization
{
    public enum Form { NFC, NFD, NFKC, NFKD }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate IntPtr GetInstance(ref int error);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate int NormalizeFn(IntPtr normalizer, IntPtr src, int length, IntPtr dest, int capacity, ref int error);

    private sealed record Icu(NormalizeFn Normalize, IntPtr[] Instances);

    private static readonly Lazy<Icu?> Library = new(Load);

    private static Icu? Load()
    {
        foreach (string name in new[] { "libicuuc.so" }.Concat(Enumerable.Range(50, 40).Reverse().Select(v => $"libicuuc.so.{v}")))
        {
            if (!NativeLibrary.TryLoad(name, out var handle)) continue;
            string? suffix = null;
            foreach (var s in new[] { "" }.Concat(Enumerable.Range(50, 40).Reverse().Select(v => "_" + v)))
                if (NativeLibrary.TryGetExport(handle, "unorm2_normalize" + s, out _)) { suffix = s; break; }
            if (suffix is null) continue;
            var normalize = Marshal.GetDelegateForFunctionPointer<NormalizeFn>(NativeLibrary.GetExport(handle, "unorm2_normalize" + suffix));
            var instances = new[] { "NFC", "NFD", "NFKC", "NFKD" }.Select(f =>
            {
                var get = Marshal.GetDelegateForFunctionPointer<GetInstance>(NativeLibrary.GetExport(handle, $"unorm2_get{f}Instance{suffix}"));
                int error = 0;
                var instance = get(ref error);
                return error > 0 ? IntPtr.Zero : instance;
            }).ToArray();
            if (instances.All(i => i != IntPtr.Zero)) return new Icu(normalize, instances);
        }
        return null;
    }

    public static string Normalize(string text, Form form)
    {
        if (text.Length == 0 || Ascii.IsValid(text)) return text;
        var icu = Library.Value ?? throw new UnsupportedException($"{form} normalization of non-ASCII text needs the ICU library (libicuuc), which this machine lacks");
        int capacity = text.Length * 4 + 16;
        while (true)
        {
            var dest = new char[capacity];
            var source = text.ToCharArray();
            int error = 0, n;
            var pinnedSource = GCHandle.Alloc(source, GCHandleType.Pinned);
            var pinnedDest = GCHandle.Alloc(dest, GCHandleType.Pinned);
            try { n = icu.Normalize(icu.Instances[(int)form], pinnedSource.AddrOfPinnedObject(), source.Length, pinnedDest.AddrOfPinnedObject(), capacity, ref error); }
            finally { pinnedSource.Free(); pinnedDest.Free(); }
            if (error == 15 /* U_BUFFER_OVERFLOW_ERROR */ || n > capacity) { capacity = n + 16; continue; }
            if (error > 0) throw new UnsupportedException($"{form} normalization failed (ICU error {error})");
            return new string(dest, 0, n);
        }
    }
}
