namespace ShardPipe.Modeling.Layers;

/// <summary>
/// Float32 inputs of more than <see cref="Fp32Kernels.MaxRows"/> rows (a prefill, the prompts of many arriving streams
/// as one merged step): the register-blocked kernel of Fp32MultiRow.cs in passes of at most <see cref="Fp32Kernels.MaxRows"/>
/// input rows, near-equal, each over the thread's whole range of output columns. A pass keeps its input rows in L2
/// (64 × 2048 floats, 512 KB) while the four weight rows of a register block stay in L1; a single pass over hundreds of
/// rows would stream every input row from L3 once per four weight rows. Each row's output is computed exactly as in a
/// step of its own (the same blocks, the same order of accumulation), so a prompt prefilled alone and the same prompt
/// merged with others give the same bits — which libtorch's GEMM beyond the kernel's rows did not.
/// </summary>
public static unsafe class Fp32LongInputs
{
    /// <summary>Off: inputs of more than <see cref="Fp32Kernels.MaxRows"/> rows go to libtorch's GEMM, as before (benchmarks compare both in one run; default on).</summary>
    public static bool Enabled { get; set; } = true;

    /// <summary>The row count of pass <paramref name="pass"/> of <paramref name="passes"/> over <paramref name="m"/> rows (near-equal, the first ones one longer).</summary>
    public static int PassRows(int m, int passes, int pass) => m / passes + (pass < m % passes ? 1 : 0);

    /// <summary>The passes over <paramref name="m"/> rows: the fewest of at most <see cref="Fp32Kernels.MaxRows"/> rows each.</summary>
    public static int Passes(int m) => (m + Fp32Kernels.MaxRows - 1) / Fp32Kernels.MaxRows;

    /// <summary>Output columns [from, to) of all <paramref name="m"/> input rows, pass by pass.</summary>
    internal static void Passes(float* w, float* x, float* y, float* bias, int k, int n, int m, int from, int to, bool portable, long job = 0)
    {
        int passes = Passes(m), r = 0;
        for (int p = 0; p < passes; p++)
        {
            int rows = PassRows(m, passes, p);
            // job and the whole input: a thread packs each pass's rows once for all its parts of the job (PackOncePerJob)
            Fp32Kernels.RowsOf(w, x + (long)r * k, y + (long)r * n, bias, k, n, rows, from, to, portable, job, x, m);
            r += rows;
        }
    }
}
