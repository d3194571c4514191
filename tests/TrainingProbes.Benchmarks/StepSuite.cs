using System.Diagnostics;
using TorchSharp;
using TrainingProbes;
using TrainingProbes.Examples;
using static TorchSharp.torch;
using static BenchmarkStatistics;
using TrainingProbes.Optimizers;

/// <summary>
/// What the training thread feels of a window: the wall time of each step call (forward, backward, <c>session.Step</c>,
/// optimizer step) on the MNIST MLP 784-256-256-10 (batch 64, SGD 0.05, one torch thread), the median of all steps and
/// the median of the steps that close a window (the micro-batch pass runs there), with the window's statistics on the
/// worker and inline. A fixed interval places enough windows to take a median of their steps.
///
///   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- steps [windows] [--data folder]
/// </summary>
internal static class StepSuite
{
    public static void Run(int windows, string data)
    {
        torch.set_num_threads(1);
        const int Interval = 50, Batch = 64;
        var (images, labels) = Mnist.Load(data);
        var flat = images.reshape(images.shape[0], -1);
        Console.WriteLine($"steps: MNIST MLP 784-256-256-10, batch {Batch}, SGD 0.05, one torch thread, a window every {Interval} steps, {windows} windows after two warm-up ones; {DateTime.UtcNow:yyyy-MM-dd}");
        Console.WriteLine($"{"variant",-34} {"median step (ms)",17} {"closing step (ms)",18} {"closing / median",17} {"step after (ms)",16}");
        foreach (int k in new[] { 8, 16 })
            foreach (bool background in new[] { true, false })
            {
                torch.manual_seed(1);
                var model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10));
                var optimizer = new GcSafeSgd(model.parameters(), lr: 0.05);
                var lossFunction = nn.CrossEntropyLoss();
                using var session = ProbeSession.Attach(model, new ProbeOptions
                {
                    WindowSize = k, Interval = Interval, OverheadBudget = null, Output = null, BackgroundStatistics = background,
                    Loss = lossFunction.call,
                }, optimizer);
                var generator = new Generator(5);
                var all = new List<double>();
                var closing = new List<double>();
                var after = new List<double>();
                int steps = (windows + 2) * Interval;
                for (int step = 0; step < steps; step++)
                {
                    long started = Stopwatch.GetTimestamp();
                    using (var scope = torch.NewDisposeScope())
                    {
                        var batch = torch.randint(0, flat.shape[0], [Batch], generator: generator);
                        var x = flat[batch];
                        var y = labels[batch];
                        optimizer.zero_grad();
                        var loss = lossFunction.call(model.call(x), y);
                        loss.backward();
                        session.Step(loss, x, y);
                        optimizer.step();
                    }

                    double ms = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
                    if (step < 2 * Interval) continue;   // the first windows pay one-time costs
                    all.Add(ms);
                    int phase = step % Interval;
                    if (phase == 0) closing.Add(ms);
                    else if (phase == 1) after.Add(ms);
                }

                session.Flush();
                double median = Median(all), close = Median(closing);
                string name = $"K = {k}, statistics {(background ? "on the worker" : "inline")}";
                Console.WriteLine($"{name,-34} {median,17:F3} {close,18:F3} {close / median,17:F2} {Median(after),16:F3}");
                if (session.FailureCount > 0) Console.WriteLine($"  {session.FailureCount} probe failures");
                model.Dispose();
            }
    }
}
