using System.Diagnostics;
using TorchSharp;
using TrainingProbes;
using static TorchSharp.torch;

/// <summary>
/// One window's statistics against the read-once floor and the obvious implementation, at several sizes. Every figure is
/// a median over windows (or repetitions) measured in the same process, one torch thread.
/// </summary>
internal static class KernelSuite
{
    public static void Run(int windows)
    {
        torch.set_num_threads(1);
        Console.WriteLine($"kernels: one Linear layer of P float32 weights, one torch thread, median of {windows} windows; {DateTime.UtcNow:yyyy-MM-dd}");
        Console.WriteLine("| P | K | geometries | window stats (ms) | floor (ms) | naive (ms) | window / floor | naive / window | drift (ms) | param read (ms) | drift / read |");
        Console.WriteLine("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (var (p, k) in new[] { (100_000L, 8), (1_000_000L, 8), (1_000_000L, 32), (10_000_000L, 8) })
            foreach (var geometries in new[] { Geometry.Euclidean, Geometry.All })
                Measure(p, k, geometries, windows);
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
            step.Add(session.Latest!.ProbeSeconds["step"] * 1e3);
            drift.Add(session.Latest.ProbeSeconds["drift"] * 1e3);
        }

        // The floor: one read of a K x P float32 buffer. The naive loop: K^2 dot products, each read back.
        using var buffer = torch.randn(k, p);
        double floor = Time(() => buffer.sum().item<float>(), windows);
        var rows = Enumerable.Range(0, k).Select(i => buffer[i]).ToArray();
        double naive = Time(() =>
        {
            double total = 0;
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++)
                    total += torch.dot(rows[i], rows[j]).item<float>();
            return total;
        }, Math.Min(windows, 3));
        double read = Time(() => weight.sum().item<float>(), windows);

        double stats = Median(step), driftMs = Median(drift);
        Console.WriteLine($"| {p:G2} | {k} | {(geometries == Geometry.All ? "all three" : "euclidean")} | {stats:F2} | {floor:F2} | {naive:F2} | {stats / floor:F1} | {naive / stats:F1} | {driftMs:F2} | {read:F3} | {driftMs / read:F1} |");
        session.Dispose();
    }

    private static double Time<T>(Func<T> action, int repetitions)
    {
        action();
        var times = new List<double>();
        for (int i = 0; i < repetitions; i++)
        {
            long start = Stopwatch.GetTimestamp();
            action();
            times.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }

        return Median(times);
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}
