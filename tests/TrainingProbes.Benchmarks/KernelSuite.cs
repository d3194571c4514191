using System.Diagnostics;
using TorchSharp;
using TrainingProbes;
using static TorchSharp.torch;
using static BenchmarkStatistics;

/// <summary>
/// One window's statistics against the read-once floor and the obvious implementation, at several sizes. Every figure is
/// a median over windows (or repetitions) measured in the same process, one torch thread.
/// </summary>
internal static class KernelSuite
{
    public static void Run(int windows, long maxParameters = long.MaxValue)
    {
        torch.set_num_threads(1);
        Console.WriteLine($"kernels: one Linear layer of P float32 weights, one torch thread, median of {windows} windows; {DateTime.UtcNow:yyyy-MM-dd}");
        Console.WriteLine("| P | K | geometries | window stats (ms) | floor (ms) | naive (ms) | window / floor | naive / window | floor, cold (ms) | window / cold floor | drift (ms) | param read, cold (ms) | drift / read |");
        Console.WriteLine("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (var (p, k) in new[] { (100_000L, 8), (1_000_000L, 8), (1_000_000L, 32), (10_000_000L, 8) }.Where(s => s.Item1 <= maxParameters))
            foreach (var geometries in new[] { Geometry.Euclidean, Geometry.All })
                Measure(p, k, geometries, windows);

        // The euclidean window's two parts on the CPU kernel (WindowKernel), each alone on a K x P buffer: the Gram
        // matrix, which is all the naive loop computes, and the GSNR sums with their K leave-one-out ratios per
        // coordinate (the jackknife), which it does not.
        Console.WriteLine();
        Console.WriteLine("| P | K | floor (ms) | Gram alone (ms) | Gram / floor | naive / Gram | GSNR sums alone (ms) | GSNR / floor |");
        Console.WriteLine("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (var (p, k) in new[] { (1_000_000L, 8), (1_000_000L, 32), (10_000_000L, 8) }.Where(s => s.Item1 <= maxParameters))
            Parts(p, k, windows);
    }

    /// <summary>
    /// The second table alone, and the same on a sparse buffer (each value nonzero with probability 0.3, like a first
    /// layer's gradients on sparse inputs: many columns where one or two minibatches carry all of the spread).
    /// </summary>
    public static void Parts(int windows)
    {
        torch.set_num_threads(1);
        Console.WriteLine("| P | K | buffer | floor (ms) | Gram alone (ms) | Gram / floor | naive / Gram | GSNR sums alone (ms) | GSNR / floor |");
        Console.WriteLine("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (bool sparse in new[] { false, true })
            foreach (var (p, k) in new[] { (1_000_000L, 8), (1_000_000L, 32) })
                Parts(p, k, windows, sparse);
    }

    private static void Parts(long p, int k, int windows, bool? sparse = null)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(1);
        var buffer = sparse == true ? torch.randn(k, p) * torch.rand(k, p).lt(0.3) : torch.randn(k, p);
        var kernel = new TrainingProbes.Statistics.WindowKernel(k, 0);
        var sums = new double[k * k + 3 + 2 * k];
        double floor = Time(() => buffer.sum().item<float>(), windows);
        double gram = Time(() => { kernel.Accumulate(buffer, 0, p, null, 0, 1, null, 0, euclidean: 0, fisherOffset: -1, adaptive: -1, gsnr: -1, sums); return sums[0]; }, windows);
        double gsnr = Time(() => { kernel.Accumulate(buffer, 0, p, null, 0, 1, null, 0, euclidean: -1, fisherOffset: -1, adaptive: -1, gsnr: k * k, sums); return sums[0]; }, windows);
        double naive = Naive(buffer, k, windows);
        string kind = sparse is null ? "" : sparse.Value ? " sparse |" : " dense |";
        long vectors = (windows + 1) * ((p + 7) / 8);   // Time runs the GSNR pass once more than it times
        if (sparse is not null) kind = kind.TrimEnd('|') + $"({100.0 * kernel.ExactVectors / vectors:F1}% in float64) |";
        Console.WriteLine($"| {p:G2} | {k} |{kind} {floor:F2} | {gram:F2} | {gram / floor:F1} | {naive / gram:F1} | {gsnr:F2} | {gsnr / floor:F1} |");
        if (sparse is null) return;
        // The whitened Gram matrices alone: the fisher one with its D from a float64 average, the adaptive one from theta.
        var fisher = torch.rand(p, dtype: ScalarType.Float64);
        var theta = torch.randn(p);
        double fisherGram = Time(() => { kernel.Accumulate(buffer, 0, p, fisher, 1e-8, 1, null, 0, euclidean: -1, fisherOffset: 0, adaptive: -1, gsnr: -1, sums); return sums[0]; }, windows);
        double adaptiveGram = Time(() => { kernel.Accumulate(buffer, 0, p, null, 0, 1, theta, 1e-3f, euclidean: -1, fisherOffset: -1, adaptive: 0, gsnr: -1, sums); return sums[0]; }, windows);
        Console.WriteLine($"|   | fisher Gram alone {fisherGram:F2} ms ({fisherGram / floor:F1} floors), adaptive Gram alone {adaptiveGram:F2} ms ({adaptiveGram / floor:F1}) | | | | | | | |");
    }

    private static void Measure(long p, int k, Geometry geometries, int windows)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(1);
        var model = nn.Linear(1000, p / 1000, hasBias: false);
        var weight = model.parameters().Single();
        using (var g = torch.enable_grad()) model.call(torch.ones(1, 1000)).sum().backward();   // creates .grad

        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = k, Interval = k, OverheadBudget = null, Output = null, Geometries = geometries, SmoothingWindows = 0,
        });
        var step = new List<double>();
        var drift = new List<double>();
        for (int w = 0; w < windows + 1; w++)
        {
            for (int i = 0; i < k; i++)
            {
                using (torch.no_grad()) weight.grad!.normal_();
                session.Step();
            }

            if (w == 0) continue;   // the first window pays one-time costs
            session.Flush();        // its statistics may still run on the session's worker
            step.Add(session.Latest!.ProbeSeconds["step"] * 1e3);
            drift.Add(session.Latest.ProbeSeconds["drift"] * 1e3);
        }

        // The floor: one read of a K x P float32 buffer. The naive loop: K^2 dot products, each read back.
        using var buffer = torch.randn(k, p);
        double floor = Time(() => buffer.sum().item<float>(), windows);
        double naive = Naive(buffer, k, windows);
        // One read of the parameters from memory, as the drift's copy of the first theta is read (the K captures since
        // have pushed it out of the cache): a 64 MB sweep before each timed read evicts the 32 MB L3 of this machine.
        using var sweep = torch.ones(16L << 20);
        double read = Time(() => weight.sum().item<float>(), windows, before: () => sweep.sum().item<float>());
        // The window reads a buffer written K steps before, from memory: the floor read the same way, after the sweep.
        double coldFloor = Time(() => buffer.sum().item<float>(), windows, before: () => sweep.sum().item<float>());

        double stats = Median(step), driftMs = Median(drift);
        Console.WriteLine($"| {p:G2} | {k} | {(geometries == Geometry.All ? "all three" : "euclidean")} | {stats:F2} | {floor:F2} | {naive:F2} | {stats / floor:F1} | {naive / stats:F1} | {coldFloor:F2} | {stats / coldFloor:F1} | {driftMs:F2} | {read:F3} | {driftMs / read:F1} |");
        session.Dispose();
    }

    /// <summary>What single torch operations cost on a K x P float32 buffer (one torch thread), to see where a window's time goes.</summary>
    private static float[]? Managed;

    public static void Operations(long p, int k)
    {
        torch.set_num_threads(1);
        using var scope = torch.NewDisposeScope();
        var g = torch.randn(k, p);
        var g64 = g.to(ScalarType.Float64);
        var row = torch.randn(p);
        var ops = new (string Name, Func<object> Op)[]
        {
            ("sum (floor)", () => g.sum().item<float>()),
            ("to(float64)", () => g.to(ScalarType.Float64)),
            ("sum(dtype float64)", () => g.sum(ScalarType.Float64).item<double>()),
            ("square().sum(float64) of a row", () => row.square().sum(ScalarType.Float64).item<double>()),
            ("mm (Gram)", () => g.mm(g.t()).sum().item<float>()),
            ("mean over K", () => g.mean([0])),
            ("amax over K", () => g.amax([0])),
            ("g - mean (float32)", () => g - g.mean([0])),
            ("g64 - mean (float64)", () => g64 - g64.mean([0])),
            ("g64 * g64", () => g64 * g64),
            ("g64.sum over K", () => g64.sum([0])),
            ("g.ne(0)", () => g.ne(0)),
            ("masked_fill f64", () => (g64 * 1).masked_fill_(g64.gt(0), 0)),
            ("bytes span, sum of all rows", () =>
            {
                double total = 0;
                for (int i = 0; i < k; i++)
                {
                    var row = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(g[i].bytes);
                    var lanes = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(row);
                    var acc = System.Numerics.Vector<float>.Zero;
                    foreach (var v in lanes) acc += v;
                    total += System.Numerics.Vector.Sum(acc);
                }
                return total;
            }),
            ("CopyTo managed, all rows", () =>
            {
                var buffer = Managed ??= new float[k * p];
                for (int i = 0; i < k; i++) g[i].data<float>().CopyTo(buffer.AsSpan((int)(i * p), (int)p));
                return buffer;
            }),
        };
        var probe = torch.zeros(4);
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(probe.bytes)[1] = 5f;
        var view = torch.zeros(2, 4)[1];
        Console.WriteLine($"bytes is a view of the tensor's memory: {probe[1].item<float>() == 5f}; of a row view, length {view.bytes.Length} (of 16)");
        foreach (var (name, op) in ops)
        {
            double ms = Time(() => { using var s = torch.NewDisposeScope(); return op(); }, 5);
            Console.WriteLine($"{name,-36} {ms,9:F2} ms");
        }
    }

    /// <summary>The obvious implementation: K^2 `dot` products of the buffer's rows, each read back.</summary>
    private static double Naive(Tensor buffer, int k, int windows)
    {
        var rows = Enumerable.Range(0, k).Select(i => buffer[i]).ToArray();
        return Time(() =>
        {
            double total = 0;
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++)
                    total += torch.dot(rows[i], rows[j]).item<float>();
            return total;
        }, Math.Min(windows, 3));
    }

    private static double Time<T>(Func<T> action, int repetitions, Func<object>? before = null)
    {
        action();
        var times = new List<double>();
        for (int i = 0; i < repetitions; i++)
        {
            before?.Invoke();
            long start = Stopwatch.GetTimestamp();
            action();
            times.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }

        return Median(times);
    }
}
