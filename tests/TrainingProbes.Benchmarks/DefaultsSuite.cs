using System.Diagnostics;
using TorchSharp;
using TrainingProbes;
using TrainingProbes.Examples;
using static TorchSharp.torch;
using static BenchmarkStatistics;
using TrainingProbes.Optimizers;

/// <summary>
/// What the one line gives with no options: the MNIST MLP 784-256-256-10, SGD 0.05, batch 64, one torch thread (or
/// <c>--threads N</c>: TorchSharp's own default is one per core, and then the statistics worker competes with training), trained
/// once bare and once with <c>model.Probe(loss, optimizer, x, y, lossFunction.call)</c>, in interleaved rounds so that
/// the machine's drifts hit both alike. Prints the median ratio of the rounds' wall times (and its quartiles), the
/// windows per 1,000 steps, and the interval after the first window against the steady one (the median of the intervals
/// in the second half of the run). The session's console lines go to a null writer: their formatting is measured, the
/// terminal is not.
///
///   dotnet run -c Release --project tests/TrainingProbes.Benchmarks -- defaults [rounds] [steps-per-round] [--threads N] [--data folder]
/// </summary>
internal static class DefaultsSuite
{
    public static void Run(int rounds, int stepsPerRound, string data, int threads = 1)
    {
        torch.set_num_threads(threads);
        var (images, labels) = Mnist.Load(data);
        var flat = images.reshape(images.shape[0], -1);
        Console.WriteLine($"defaults: MNIST MLP 784-256-256-10, SGD 0.05, batch 64, {threads} torch thread(s), the one line with no options; " +
            $"{rounds} interleaved rounds of {stepsPerRound} steps; {Environment.ProcessorCount} cores; {DateTime.UtcNow:yyyy-MM-dd}");
        var bare = new Trainer(flat, labels, probe: false);
        var probed = new Trainer(flat, labels, probe: true);
        var console = Console.Out;
        Console.SetOut(TextWriter.Null);   // before the one line reads ProbeOptions.Output
        try
        {
            bare.Train(50);
            probed.Train(50);
            var ratios = new List<double>();
            var bareTimes = new List<double>();
            for (int round = 0; round < rounds; round++)
            {
                double b = bare.Train(stepsPerRound);
                double p = probed.Train(stepsPerRound);
                bareTimes.Add(b / stepsPerRound);
                ratios.Add(p / b);
            }

            var session = ProbeSession.Get(probed.Model)!;
            session.Flush();
            var history = session.History;
            long steps = session.StepCount;
            var intervals = history.Select(s => s.Get(Indicators.ProbeInterval)).ToList();
            double steady = Median(intervals.Skip(intervals.Count / 2).ToList());
            var sorted = ratios.Order().ToList();
            Console.SetOut(console);
            Console.WriteLine($"bare loop: median {Median(bareTimes) * 1e3:F3} ms/step");
            Console.WriteLine($"one line, defaults: wall time / bare = {Median(ratios):F3} (median of {rounds} rounds; quartiles {sorted[sorted.Count / 4]:F3}-{sorted[3 * sorted.Count / 4]:F3})");
            Console.WriteLine($"windows: {history.Count} in {steps} steps = {1000.0 * history.Count / steps:F1} per 1,000 steps; achieved overhead (the session's own measure) {history[^1].Get(Indicators.ProbeOverheadTotal):P1}");
            Console.WriteLine($"interval after the first window {intervals[0]:F0} steps, steady (median of the second half) {steady:F0}: ratio {intervals[0] / steady:F2}; the first five: {string.Join(", ", intervals.Take(5).Select(i => i.ToString("F0")))}");
            var parts = history.Skip(2).SelectMany(h => h.ProbeSeconds).GroupBy(kv => kv.Key)
                .Select(g => $"{g.Key} {Median(g.Select(kv => kv.Value).ToList()) * 1e3:F2}");
            Console.WriteLine($"median ms per window: {string.Join(", ", parts)}");
            session.Dispose();
        }
        finally
        {
            Console.SetOut(console);
        }
    }

    private sealed class Trainer
    {
        private readonly Tensor _images, _labels;
        private readonly optim.Optimizer _optimizer;
        private readonly nn.Module<Tensor, Tensor, Tensor> _loss = nn.CrossEntropyLoss();
        private readonly Generator _generator = new(17);
        private readonly bool _probe;

        public Trainer(Tensor images, Tensor labels, bool probe)
        {
            _images = images;
            _labels = labels;
            _probe = probe;
            torch.manual_seed(3);
            Model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10));
            _optimizer = new GcSafeSgd(Model.parameters(), lr: 0.05);
        }

        public nn.Module<Tensor, Tensor> Model { get; }

        /// <summary>Trains <paramref name="steps"/> steps and returns the seconds they took.</summary>
        public double Train(int steps)
        {
            long n = _images.shape[0];
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < steps; i++)
            {
                using var scope = torch.NewDisposeScope();
                var batch = torch.randint(0, n, [64], generator: _generator);
                var x = _images[batch];
                var y = _labels[batch];
                _optimizer.zero_grad();
                var loss = _loss.call(Model.call(x), y);
                loss.backward();
                if (_probe) Model.Probe(loss, _optimizer, x, y, _loss.call);
                _optimizer.step();
            }

            return Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
    }
}
