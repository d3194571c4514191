using System.Diagnostics;
using TorchSharp;
using TrainingProbes;
using static TorchSharp.torch;
using static BenchmarkStatistics;

/// <summary>
/// What the training thread feels of a window: the wall time of each step call (forward, backward,
/// <c>session.Step</c>, optimizer step) on a model of P float32 weights (two Linear layers, batch 64, one torch
/// thread), with a fixed interval, and the median of the steps on which a window closes against the median of all
/// steps. With background statistics and without, and with and without the one-theta evaluations (K extra forward
/// and backward passes at the close, which need the model and so stay on the training thread).
///
///   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- steps [P] [windows]
/// </summary>
internal static class StepSuite
{
    public static void Run(long parameters, int windows)
    {
        torch.set_num_threads(1);
        const int k = 16, interval = 64, batch = 64;
        int width = (int)Math.Sqrt(parameters / 2.0);
        Console.WriteLine($"steps: two Linear layers {width} x {width} ({2L * width * width:N0} weights), batch {batch}, K = {k}, interval {interval}, one torch thread, {windows} windows after a warm-up one; {DateTime.UtcNow:yyyy-MM-dd}");
        Console.WriteLine($"{"variant",-44} {"median step (ms)",17} {"closing step (ms)",18} {"closing / median",17} {"after-close (ms)",17}");
        foreach (bool oneTheta in new[] { false, true })
            foreach (bool background in new[] { false, true })
            {
                torch.manual_seed(1);
                var model = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width));
                var optimizer = optim.SGD(model.parameters(), 1e-3);
                var x = torch.randn(batch, width);
                var y = torch.randn(batch, width);
                static Tensor Loss(Tensor output, Tensor target) => nn.functional.mse_loss(output, target);
                using var session = ProbeSession.Attach(model, new ProbeOptions
                {
                    WindowSize = k, Interval = interval, OverheadBudget = null, Output = null, BackgroundStatistics = background,
                    Loss = oneTheta ? Loss : null, SmoothingWindows = 0,
                }, optimizer);
                var all = new List<double>();
                var closing = new List<double>();
                var after = new List<double>();
                int steps = (windows + 1) * interval;
                for (int step = 0; step < steps; step++)
                {
                    long started = Stopwatch.GetTimestamp();
                    using (var scope = torch.NewDisposeScope())
                    {
                        optimizer.zero_grad();
                        var loss = Loss(model.call(x), y);
                        loss.backward();
                        session.Step(loss, x, y);
                        optimizer.step();
                    }

                    double ms = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
                    if (step < interval) continue;   // the first window pays one-time costs
                    all.Add(ms);
                    int phase = step % interval;
                    if (phase == k - 1) closing.Add(ms);
                    else if (phase == k) after.Add(ms);
                }

                session.Flush();
                double median = Median(all), close = Median(closing);
                string name = $"{(oneTheta ? "one-theta + step" : "step family only")}, {(background ? "background" : "inline")}";
                Console.WriteLine($"{name,-44} {median,17:F2} {close,18:F2} {close / median,17:F2} {Median(after),17:F2}");
                if (session.FailureCount > 0) Console.WriteLine($"  {session.FailureCount} probe failures");
                model.Dispose();
            }
    }
}
