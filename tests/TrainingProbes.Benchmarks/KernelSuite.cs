using System.Diagnostics;
using TorchSharp;
using TrainingProbes;
using TrainingProbes.Statistics;
using static TorchSharp.torch;
using static BenchmarkStatistics;

/// <summary>
/// A window's statistics against the read-once floor and the obvious implementation, at several sizes, one torch thread,
/// every figure a median of repetitions in the same process.
/// <list type="bullet">
/// <item><description>The statistics: <see cref="WindowKernel"/> over a [K, P] float32 buffer (the Gram matrix of each
/// geometry, the GSNR sums with their influences, the fold of the Fisher average), euclidean alone and all three.</description></item>
/// <item><description>The floor: one <c>sum()</c> over the buffer, read warm (the same buffer again and again) and cold
/// (after a 64 MB sweep, as a ring of step gradients written K steps before is read).</description></item>
/// <item><description>The obvious implementation: the K^2 <c>dot</c> products of the rows, each read back.</description></item>
/// <item><description>The managed pass's float32 fast path against the same sums by its float64 path alone (a nonzero
/// epsilon sends every column there) and by the tensor backend (<see cref="CoordinateSums.Accumulate"/>), all three
/// geometries: whether the fast path pays for its second implementation of the definition.</description></item>
/// <item><description>The default window end to end: one Linear layer of P weights, a batch of 64 split into K
/// micro-batches; the training thread's pass (forward and backward to the layer's output) and the worker's job (the
/// micro-batch gradients made block by block from the layer's input and output gradients, and their statistics).</description></item>
/// </list>
/// </summary>
internal static unsafe class KernelSuite
{
    public static void Run(int repetitions, long maxParameters = long.MaxValue)
    {
        torch.set_num_threads(1);
        Console.WriteLine($"kernels: [K, P] float32 buffers, one torch thread, median of {repetitions}; {DateTime.UtcNow:yyyy-MM-dd}");
        Console.WriteLine("| P | K | floor (ms) | floor, cold (ms) | naive (ms) | euclidean (ms) | all three (ms) | euclidean / floor | euclidean / cold floor | all three / floor | all three / cold floor | naive / euclidean |");
        Console.WriteLine("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (var (p, k) in new[] { (100_000L, 8), (100_000L, 16), (1_000_000L, 8), (1_000_000L, 16), (10_000_000L, 8), (10_000_000L, 16) }.Where(s => s.Item1 <= maxParameters))
            Measure(p, k, repetitions);

        Console.WriteLine();
        Console.WriteLine("The same sums (all three geometries) by the managed pass's float32 fast path, its float64 path alone, and the tensor backend:");
        Console.WriteLine("| P | K | fast path (ms) | float64 path (ms) | tensor backend (ms) | float64 / fast | tensor / fast |");
        Console.WriteLine("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (var (p, k) in new[] { (100_000L, 8), (100_000L, 16), (1_000_000L, 8), (1_000_000L, 16) }.Where(s => s.Item1 <= maxParameters))
            FastPath(p, k, repetitions);

        Console.WriteLine();
        Console.WriteLine("The default window on one Linear layer of P weights, batch 64 in K micro-batches (all three geometries):");
        Console.WriteLine("| P | K | training thread: pass (ms) | worker: job (ms) | job / floor | job / cold floor |");
        Console.WriteLine("| ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (var (p, k) in new[] { (1_000_000L, 8), (1_000_000L, 16) }.Where(s => s.Item1 <= maxParameters))
            MicroBatchWindow(p, k, repetitions);
    }

    private static void Measure(long p, int k, int repetitions)
    {
        using var scope = torch.NewDisposeScope();
        var (buffer, fisher, theta) = Inputs(p, k);
        double Statistics(Geometry[] geometries) =>
            KernelTime(buffer, fisher, theta, new CoordinateSums.Layout(k, geometries), 0, repetitions);

        double floor = Time(() => buffer.sum().item<float>(), repetitions);
        using var sweep = torch.ones(16L << 20);
        double cold = Time(() => buffer.sum().item<float>(), repetitions, before: () => sweep.sum().item<float>());
        double naive = Naive(buffer, k, repetitions);
        double euclidean = Statistics([Geometry.Euclidean]);
        double all = Statistics([Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive]);
        Console.WriteLine($"| {p:G2} | {k} | {floor:F2} | {cold:F2} | {naive:F2} | {euclidean:F2} | {all:F2} | {euclidean / floor:F1} | {euclidean / cold:F1} | {all / floor:F1} | {all / cold:F1} | {naive / euclidean:F1} |");
    }

    private static void FastPath(long p, int k, int repetitions)
    {
        using var scope = torch.NewDisposeScope();
        var (buffer, fisher, theta) = Inputs(p, k);
        var layout = new CoordinateSums.Layout(k, [Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive]);
        double fast = KernelTime(buffer, fisher, theta, layout, 0, repetitions);
        double exact = KernelTime(buffer, fisher, theta, layout, 1e-300, repetitions);
        var tensorSums = torch.zeros(layout.Length, ScalarType.Float64);
        var blockState = new CoordinateSums.BlockState(fisher, 0.9, 1e-8, 1, theta, 0, ScalarType.Float32);
        double tensor = Time(() =>
        {
            using var inner = torch.NewDisposeScope();
            return CoordinateSums.Accumulate(buffer, blockState, layout, 0, tensorSums).item<double>();
        }, repetitions);
        Console.WriteLine($"| {p:G2} | {k} | {fast:F2} | {exact:F2} | {tensor:F2} | {exact / fast:F1} | {tensor / fast:F1} |");
    }

    /// <summary>A [K, P] float32 buffer of gradients, F (float64) and theta (float32) of P columns, from seed 1.</summary>
    private static (Tensor Buffer, Tensor Fisher, Tensor Theta) Inputs(long p, int k)
    {
        torch.manual_seed(1);
        return (torch.randn(k, p), torch.rand(p, dtype: ScalarType.Float64), torch.randn(p));
    }

    /// <summary>The median time of <see cref="WindowKernel.Accumulate"/> over the [K, P] <paramref name="buffer"/>, with F and theta of P columns.</summary>
    private static double KernelTime(Tensor buffer, Tensor fisher, Tensor theta, CoordinateSums.Layout layout, double epsilon, int repetitions)
    {
        int k = layout.K;
        long p = buffer.shape[1];
        var kernel = new WindowKernel(layout, epsilon);
        var sums = new double[layout.Length];
        float* start = WindowKernel.Address<float>(buffer);
        var rows = new nint[k];
        for (int i = 0; i < k; i++) rows[i] = (nint)(start + i * p);
        var state = new WindowKernel.State
        {
            Fisher = WindowKernel.Address<double>(fisher), Decay = 0.9, Floor = 1e-8, Bias = 1, Theta = WindowKernel.Address<float>(theta),
            Eta = 0, StoredEpsilon = Math.Pow(2, -23),
        };
        return Time(() =>
        {
            fixed (nint* pointers = rows) return kernel.Accumulate((float**)pointers, p, state, sums);
        }, repetitions);
    }

    private static void MicroBatchWindow(long p, int k, int repetitions)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(1);
        const int Inputs = 1000, Batch = 64;
        var model = nn.Linear(Inputs, p / Inputs);
        var x = torch.randn(Batch, Inputs);
        var y = torch.randn(Batch, p / Inputs);
        static Tensor Loss(Tensor output, Tensor target) => nn.functional.mse_loss(output, target);
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = k, Interval = 1, OverheadBudget = null, Output = null, SmoothingWindows = 0, Loss = Loss,
        });
        var pass = new List<double>();
        var job = new List<double>();
        for (int w = 0; w < repetitions + 2; w++)
        {
            using (var step = torch.NewDisposeScope())
            {
                model.zero_grad();
                var loss = Loss(model.call(x), y);
                loss.backward();
                session.Step(loss, x, y);
            }

            session.Flush();   // the window's statistics, on the worker
            if (w < 2) continue;   // the first windows pay one-time costs
            pass.Add(session.Latest!.ProbeSeconds["capture"] * 1e3);
            job.Add(session.Latest.ProbeSeconds["gradient"] * 1e3);
        }

        var buffer = torch.randn(k, p);
        double floor = Time(() => buffer.sum().item<float>(), repetitions);
        using var sweep = torch.ones(16L << 20);
        double cold = Time(() => buffer.sum().item<float>(), repetitions, before: () => sweep.sum().item<float>());
        Console.WriteLine($"| {p:G2} | {k} | {Median(pass):F2} | {Median(job):F2} | {Median(job) / floor:F1} | {Median(job) / cold:F1} |");
    }

    /// <summary>The obvious implementation: K^2 `dot` products of the buffer's rows, each read back.</summary>
    private static double Naive(Tensor buffer, int k, int repetitions)
    {
        var rows = Enumerable.Range(0, k).Select(i => buffer[i]).ToArray();
        return Time(() =>
        {
            double total = 0;
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++)
                    total += torch.dot(rows[i], rows[j]).item<float>();
            return total;
        }, Math.Min(repetitions, 3));
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
