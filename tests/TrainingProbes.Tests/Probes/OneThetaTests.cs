using TorchSharp;
using TrainingProbes.Tests.IndicatorsTests;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Probes;

/// <summary>
/// The default indicators are taken at one theta: when a window closes, its K step batches are evaluated at the
/// window's first parameters (before any of them was trained on). Checked against an independent recomputation: a
/// separate copy of the model, loaded with those parameters, runs a plain forward and <c>backward()</c> on each
/// recorded batch, and the double-precision reference formulas take it from there.
/// </summary>
public sealed class OneThetaTests
{
    private const int Inputs = 6, Classes = 3, Batch = 12;

    private static nn.Module<Tensor, Tensor> Mlp(long seed)
    {
        torch.manual_seed(seed);
        return nn.Sequential(nn.Linear(Inputs, 10, dtype: ScalarType.Float64), nn.Tanh(), nn.Linear(10, Classes, dtype: ScalarType.Float64));
    }

    private static Tensor CrossEntropy(Tensor output, Tensor target) => nn.functional.cross_entropy(output, target);

    /// <summary>Records each window's batches and, at its close, the gradients of a separate copy of the model at the current theta.</summary>
    private sealed class IndependentRecomputation(int k) : TrainingProbe
    {
        private readonly (Tensor X, Tensor Y)[] _batches = new (Tensor, Tensor)[k];

        public List<double[][]> Windows { get; } = [];

        public List<double[]> Thetas { get; } = [];

        public override string Name => "recomputation";

        private Tensor[] _first = [];

        public override void OnStep(ProbeStepContext step)
        {
            if (step.WindowSlot < 0) return;
            _batches[step.WindowSlot] = (step.Input!.clone().DetachFromDisposeScope(), step.Target!.clone().DetachFromDisposeScope());
            // The window's first theta: before its first optimizer step, so before any of its batches was trained on.
            if (step.WindowSlot == 0) _first = step.Model.parameters().Select(p => p.detach().clone().DetachFromDisposeScope()).ToArray();
        }

        public override void OnWindowClosed(ProbeWindowContext window)
        {
            var copy = Mlp(seed: 99);
            using (torch.no_grad())
                foreach (var (mine, first) in copy.parameters().Zip(_first))
                    mine.copy_(first);
            Thetas.Add(copy.parameters().SelectMany(p => p.data<double>().ToArray()).ToArray());

            var gradients = new double[k][];
            using (torch.enable_grad())
                for (int i = 0; i < k; i++)
                {
                    copy.zero_grad();
                    CrossEntropy(copy.call(_batches[i].X), _batches[i].Y).backward();
                    gradients[i] = copy.parameters().SelectMany(p => p.grad!.data<double>().ToArray()).ToArray();
                }

            Windows.Add(gradients);
        }
    }

    private static (ProbeSession Session, IndependentRecomputation Recomputation) Train(int k, int steps, ProbeOptions? options = null)
    {
        var model = Mlp(seed: 1);
        var optimizer = optim.SGD(model.parameters(), 0.2, momentum: 0.5);
        var recomputation = new IndependentRecomputation(k);
        var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = k, Interval = k + 2, Output = null, OverheadBudget = null, FisherDecay = 0, FisherFloor = 0,
            Probes = [recomputation], LayerMetrics = options?.LayerMetrics ?? 0, SmoothingWindows = options?.SmoothingWindows ?? 5,
        }, optimizer);
        Steps(model, optimizer, steps, seed: 5, passBatch: true);
        return (session, recomputation);
    }

    /// <summary>Plain SGD steps on random batches with the one line, with or without the batch and loss function.</summary>
    private static void Steps(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, int steps, ulong seed, bool passBatch)
    {
        var generator = new Generator(seed);
        for (int step = 0; step < steps; step++)
        {
            using var scope = NewDisposeScope();
            var x = randn([Batch, Inputs], dtype: ScalarType.Float64, generator: generator);
            var y = randint(0, Classes, [Batch], generator: generator);
            optimizer.zero_grad();
            var loss = CrossEntropy(model.call(x), y);
            loss.backward();
            if (passBatch) model.Probe(loss, optimizer, x, y, CrossEntropy);
            else model.Probe(loss, optimizer);
            optimizer.step();
        }
    }

    [Theory]
    [InlineData(5)]
    [InlineData(8)]
    public void The_default_family_is_that_of_the_window_batches_at_its_first_theta(int k)
    {
        var (session, recomputation) = Train(k, steps: 3 * (k + 2));
        using (session)
        {
            Assert.Equal(0, session.FailureCount);
            session.Flush();
            var history = session.History;
            Assert.Equal(3, history.Count);
            for (int w = 0; w < history.Count; w++)
            {
                var g = recomputation.Windows[w];
                var expected = new Dictionary<Geometry, Dictionary<string, double>>
                {
                    [Geometry.Euclidean] = ReferenceIndicators.FirstOrder(g, 0.9),
                    // FisherDecay = 0: F is the mean squared gradient of this window's K gradients.
                    [Geometry.Fisher] = ReferenceIndicators.FirstOrder(ReferenceIndicators.Whiten(g, FisherOf(g)), 0.9),
                    [Geometry.Adaptive] = ReferenceIndicators.FirstOrder(ReferenceIndicators.Whiten(g, ReferenceIndicators.AdaptiveWhitening(recomputation.Thetas[w], 0)), 0.9),
                };
                foreach (var (geometry, values) in expected)
                    foreach (var name in ReferenceIndicators.FirstOrderNames)
                    {
                        double scale = name is Indicators.Regret or Indicators.RegretUpper ? values[Indicators.GradientNorm] : name == Indicators.Cosine ? 1 : 0;
                        Close.Assert(values[name], history[w].Get(name, geometry), 1e-9, $"window {w}: {name} [{geometry}]", scale);
                    }

                Close.Assert(ReferenceIndicators.Gsnr(g, 0), history[w].Get(Indicators.Gsnr), 1e-9, $"window {w}: gsnr", 1e-3);
                // The step-to-step statistics are published beside it, under their own names, and differ.
                Assert.NotEqual(history[w].Get(Indicators.Cosine, Geometry.Euclidean), history[w].Get(StepNames.Step(Indicators.Cosine), Geometry.Euclidean));
            }
        }
    }

    private static double[] FisherOf(double[][] g) =>
        Enumerable.Range(0, g[0].Length).Select(c =>
        {
            double f = g.Average(gi => gi[c] * gi[c]);
            return f > 0 ? 1 / Math.Sqrt(f) : 0;
        }).ToArray();

    [Fact]
    public void Smoothed_values_are_the_mean_of_the_last_windows_with_their_errors_in_quadrature()
    {
        const int K = 5, Windows = 4;
        var (session, _) = Train(K, steps: Windows * (K + 2), new ProbeOptions { SmoothingWindows = 3 });
        using (session)
        {
            session.Flush();
            var history = session.History;
            Assert.Equal(Windows, history.Count);
            foreach (var (name, geometry) in new[] { (Indicators.Cosine, Geometry.Euclidean), (Indicators.RelativeRegret, Geometry.Fisher), (Indicators.Gsnr, Geometry.None) })
                for (int w = 0; w < Windows; w++)
                {
                    var last = history.Take(w + 1).TakeLast(3).ToList();
                    double mean = last.Average(s => s.Get(name, geometry));
                    double error = Math.Sqrt(last.Sum(s => Math.Pow(s.Get(name + Indicators.StandardErrorSuffix, geometry), 2))) / last.Count;
                    Close.Assert(mean, history[w].Get(name + Indicators.SmoothedSuffix, geometry), 1e-12, $"window {w}: {name}.smoothed", 1e-3);
                    Close.Assert(error, history[w].Get(name + Indicators.SmoothedSuffix + Indicators.StandardErrorSuffix, geometry), 1e-12, $"window {w}: {name}.smoothed.stderr");
                }
        }
    }

    [Fact]
    public void Per_layer_values_are_the_one_theta_indicators_of_that_parameter_alone()
    {
        const int K = 5;
        var (session, recomputation) = Train(K, steps: K + 2, new ProbeOptions { LayerMetrics = 1 });
        using (session)
        {
            session.Flush();
            var snapshot = session.Latest!;
            Assert.Equal(["0.weight"], snapshot.Values.Where(v => v.Layer is not null).Select(v => v.Layer!).Distinct().ToArray());
            int count = Inputs * 10;   // 0.weight comes first in the flattened order
            var layer = recomputation.Windows[^1].Select(gi => gi[..count]).ToArray();
            var expected = ReferenceIndicators.FirstOrder(layer, 0.9);
            foreach (var name in new[] { Indicators.GradientNorm, Indicators.Cosine, Indicators.RelativeRegret })
                Close.Assert(expected[name], snapshot.Get(name, Geometry.Euclidean, "0.weight"), 1e-9, $"layer {name}", scale: 1);
            Close.Assert(ReferenceIndicators.Gsnr(layer, 0), snapshot.Get(Indicators.Gsnr, Geometry.None, "0.weight"), 1e-9, "layer gsnr", 1e-3);
            Assert.NotEqual(snapshot.Get(Indicators.GradientNorm, Geometry.Euclidean), snapshot.Get(Indicators.GradientNorm, Geometry.Euclidean, "0.weight"));
        }
    }

    [Fact]
    public void Training_with_the_extra_passes_is_bit_identical_to_training_without_a_session()
    {
        // Batch norm (running statistics) and dropout (random state): the probe's passes must leave no trace.
        static nn.Module<Tensor, Tensor> Net()
        {
            torch.manual_seed(3);
            return nn.Sequential(nn.Linear(Inputs, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, Classes));
        }

        Dictionary<string, Tensor> Run(bool probe)
        {
            var model = Net();
            var optimizer = optim.SGD(model.parameters(), 0.1);
            using var session = probe ? ProbeSession.Attach(model, new ProbeOptions { WindowSize = 4, Interval = 4, Output = null, OverheadBudget = null }, optimizer) : null;
            var generator = new Generator(8);
            torch.manual_seed(17);   // the dropout stream
            for (int step = 0; step < 24; step++)
            {
                using var scope = NewDisposeScope();
                var x = randn([Batch, Inputs], generator: generator);
                var y = randint(0, Classes, [Batch], generator: generator);
                optimizer.zero_grad();
                var loss = CrossEntropy(model.call(x), y);
                loss.backward();
                if (probe) model.Probe(loss, optimizer, x, y, CrossEntropy);
                optimizer.step();
            }

            session?.Flush();
            if (probe) Assert.Equal(6, session!.History.Count(s => s.TryGetValue(Indicators.Cosine, Geometry.Euclidean, out _)));
            return model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone().DetachFromDisposeScope());
        }

        var with = Run(probe: true);
        var without = Run(probe: false);
        foreach (var (name, tensor) in without)
            Assert.True(tensor.eq(with[name]).all().item<bool>(), $"{name} differs after training with the one-theta passes");
    }

    [Fact]
    public void Without_the_batch_the_session_says_once_what_it_misses_and_publishes_the_step_statistics()
    {
        var model = Mlp(seed: 2);
        var optimizer = optim.SGD(model.parameters(), 0.1);
        var output = new StringWriter();
        using var session = ProbeSession.Attach(model, new ProbeOptions { WindowSize = 4, Interval = 4, Output = output, OverheadBudget = null }, optimizer);
        Steps(model, optimizer, 12, seed: 2, passBatch: false);

        var text = output.ToString();
        Assert.Equal(1, text.Split('\n').Count(l => l.Contains("need K minibatch gradients at one theta")));
        Assert.Contains("model.Probe(loss, optimizer, input, target, lossFunction.call)", text);
        Assert.Equal(0, session.FailureCount);
        session.Flush();
        Assert.All(session.History, s => Assert.False(s.TryGetValue(Indicators.Cosine, Geometry.Euclidean, out _)));
        Assert.All(session.History, s => Assert.True(s.TryGetValue(StepNames.Step(Indicators.Cosine), Geometry.Euclidean, out _)));
    }
}
