using TorchSharp;
using TorchSharp.Modules;
using TrainingProbes.Tests.IndicatorsTests;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Probes;

/// <summary>
/// The default indicators are taken at one theta: at a window's closing step (after <c>backward()</c>, before the
/// optimizer step) the step's minibatch is split into K micro-batches, and the family of their K gradients is reported
/// for minibatches of the trainer's size. Checked against an independent recomputation: a separate copy of the model,
/// loaded with the step's parameters, runs a plain forward and <c>backward()</c> on each micro-batch, and the
/// double-precision reference formulas take it from there (with the batch scale K). The one-pass path (Linear and
/// convolution layers, from their inputs and output gradients) and the K-pass path give the same values.
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

    /// <summary>At each window's close, the gradients of the K micro-batches of its step's batch, by a separate copy of the model.</summary>
    private sealed class IndependentRecomputation(int k, Func<nn.Module<Tensor, Tensor>> copyOf) : TrainingProbe
    {
        public List<double[][]> Windows { get; } = [];

        public List<double[]> Thetas { get; } = [];

        public override string Name => "recomputation";

        public override void OnWindowClosed(ProbeWindowContext window)
        {
            var copy = copyOf();
            using (torch.no_grad())
                foreach (var (mine, theirs) in copy.parameters().Zip(window.Model.parameters()))
                    mine.copy_(theirs);
            Thetas.Add(copy.parameters().SelectMany(p => p.data<double>().ToArray()).ToArray());

            long perMicro = window.Input!.shape[0] / k;
            var gradients = new double[k][];
            using (torch.enable_grad())
                for (int i = 0; i < k; i++)
                {
                    copy.zero_grad();
                    CrossEntropy(copy.call(window.Input.narrow(0, i * perMicro, perMicro)), window.Target!.narrow(0, i * perMicro, perMicro)).backward();
                    gradients[i] = copy.parameters().SelectMany(p => p.grad!.data<double>().ToArray()).ToArray();
                }

            Windows.Add(gradients);
        }
    }

    private static (ProbeSession Session, IndependentRecomputation Recomputation) Train(int k, int steps, ProbeOptions? options = null,
        Func<long, nn.Module<Tensor, Tensor>>? net = null)
    {
        net ??= Mlp;
        var model = net(1);
        var optimizer = new GcSafeSgd(model.parameters(), 0.2, momentum: 0.5);
        var recomputation = new IndependentRecomputation(k, () => net(99));
        var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = k, Interval = k + 2, Output = null, OverheadBudget = null, FisherDecay = 0, FisherFloor = 0,
            Probes = [recomputation], LayerMetrics = options?.LayerMetrics ?? 0, SmoothingWindows = options?.SmoothingWindows ?? 5,
            StepStatistics = options?.StepStatistics ?? false,
        }, optimizer);
        Steps(model, optimizer, steps, seed: 5, passBatch: true);
        return (session, recomputation);
    }

    /// <summary>Plain SGD steps on random batches with the one line, with or without the batch and loss function.</summary>
    private static void Steps(nn.Module<Tensor, Tensor> model, optim.Optimizer optimizer, int steps, int seed, bool passBatch, int inputs = Inputs) =>
        Trainer.Train(model, optimizer, steps, seed, (loss, x, y) =>
        {
            if (passBatch) model.Probe(loss, optimizer, x, y, CrossEntropy);
            else model.Probe(loss, optimizer);
        }, new Classification(inputs, Classes, Batch, ScalarType.Float64));

    /// <summary>Every value of the family and GSNR against the reference, window by window.</summary>
    private static void AssertFamily(ProbeSession session, IndependentRecomputation recomputation, int k, int windows)
    {
        session.Flush();
        var history = session.History;
        Assert.Equal(windows, history.Count);
        for (int w = 0; w < history.Count; w++)
        {
            var g = recomputation.Windows[w];
            var expected = new Dictionary<Geometry, Dictionary<string, double>>
            {
                [Geometry.Euclidean] = ReferenceIndicators.FirstOrder(g, 0.9, scale: k),
                // FisherDecay = 0: F is the mean squared gradient of this window's K gradients.
                [Geometry.Fisher] = ReferenceIndicators.FirstOrder(ReferenceIndicators.Whiten(g, FisherOf(g)), 0.9, scale: k),
                [Geometry.Adaptive] = ReferenceIndicators.FirstOrder(ReferenceIndicators.Whiten(g, ReferenceIndicators.AdaptiveWhitening(recomputation.Thetas[w], 0)), 0.9, scale: k),
            };
            foreach (var (geometry, values) in expected)
                foreach (var name in ReferenceIndicators.FirstOrderNames)
                {
                    double scale = name is Indicators.Regret or Indicators.RegretUpper ? values[Indicators.GradientNorm] : name == Indicators.Cosine ? 1 : 0;
                    Close.Assert(values[name], history[w].Get(name, geometry), 1e-9, $"window {w}: {name} [{geometry}]", scale);
                }

            // GSNR of the trainer's minibatch: K times one micro-batch's; EB tests the mean of the K micro-batches, the minibatch.
            double gsnr = k * ReferenceIndicators.Gsnr(g, 0);
            Close.Assert(gsnr, history[w].Get(Indicators.Gsnr), 1e-9, $"window {w}: gsnr", 1e-3);
            Close.Assert(-gsnr, history[w].Get(Indicators.EbCriterion), 1e-9, $"window {w}: eb", 1e-3);
        }
    }

    [Theory]
    [InlineData(5)]
    [InlineData(8)]
    public void The_default_family_is_that_of_the_closing_steps_micro_batches_at_its_theta(int k)
    {
        // A batch of 12: K = 5 gives micro-batches of 2 (the last 2 examples left out), K = 8 micro-batches of 1.
        var (session, recomputation) = Train(k, steps: 3 * (k + 2));
        using (session)
        {
            Assert.Equal(0, session.FailureCount);
            Assert.False(session.Windows.MicroBatches.UsedPasses);   // Linear layers: one forward and one backward pass
            AssertFamily(session, recomputation, k, windows: 3);
        }
    }

    /// <summary>A model whose forward calls its layers' <c>forward</c>, which runs no hooks: the K-pass path.</summary>
    private sealed class DirectForward : nn.Module<Tensor, Tensor>
    {
        private readonly Linear _first, _second;

        public DirectForward(long seed) : base(nameof(DirectForward))
        {
            torch.manual_seed(seed);
            _first = nn.Linear(Inputs, 10, dtype: ScalarType.Float64);
            _second = nn.Linear(10, Classes, dtype: ScalarType.Float64);
            RegisterComponents();
        }

        public override Tensor forward(Tensor input) => _second.forward(_first.forward(input).tanh());
    }

    [Fact]
    public void A_model_the_taps_cannot_see_takes_K_passes_and_gets_the_same_values()
    {
        const int K = 5;
        var (session, recomputation) = Train(K, steps: 3 * (K + 2), net: seed => new DirectForward(seed));
        using (session)
        {
            Assert.True(session.Windows.MicroBatches.UsedPasses);
            Assert.Contains("call()", session.Windows.MicroBatches.PassesReason);
            AssertFamily(session, recomputation, K, windows: 3);
        }
    }

    [Fact]
    public void A_bare_layer_as_the_model_is_tapped_too()
    {
        // TorchSharp's modules() leaves the model itself out; the session looks at it as well.
        const int K = 4;
        var (session, recomputation) = Train(K, steps: 2 * (K + 2), net: seed =>
        {
            torch.manual_seed(seed);
            return nn.Linear(Inputs, Classes, dtype: ScalarType.Float64);
        });
        using (session)
        {
            Assert.False(session.Windows.MicroBatches.UsedPasses, session.Windows.MicroBatches.PassesReason);
            AssertFamily(session, recomputation, K, windows: 2);
        }
    }

    private static nn.Module<Tensor, Tensor> Cnn(long seed)
    {
        torch.manual_seed(seed);
        return nn.Sequential(
            nn.Unflatten(1, [1, 2, 3]),
            nn.Conv2d(1, 3, 2, padding: 1, dtype: ScalarType.Float64), nn.Tanh(),
            nn.Conv2d(3, 2, (2, 1), stride: (1, 2), dtype: ScalarType.Float64), nn.Flatten(),
            nn.Linear(2 * 2 * 2, Classes, dtype: ScalarType.Float64));
    }

    [Fact]
    public void Convolution_layers_give_their_micro_batch_gradients_in_one_pass()
    {
        // Inputs = 6 features seen as a 1 x 2 x 3 image: padding, a rectangular kernel and a stride.
        const int K = 4;
        var (session, recomputation) = Train(K, steps: 2 * (K + 2), net: Cnn);
        using (session)
        {
            Assert.False(session.Windows.MicroBatches.UsedPasses, session.Windows.MicroBatches.PassesReason);
            AssertFamily(session, recomputation, K, windows: 2);
        }
    }

    private static double[] FisherOf(double[][] g) =>
        Enumerable.Range(0, g[0].Length).Select(c =>
        {
            double f = g.Average(gi => gi[c] * gi[c]);
            return f > 0 ? 1 / Math.Sqrt(f) : 0;
        }).ToArray();

    [Fact]
    public void The_window_gradients_a_probe_reads_are_the_micro_batch_gradients()
    {
        const int K = 4;
        var read = new List<double[][]>();
        var reader = new GradientReader(read);
        var model = Mlp(seed: 1);
        var optimizer = new GcSafeSgd(model.parameters(), 0.2);
        var recomputation = new IndependentRecomputation(K, () => Mlp(99));
        using var session = ProbeSession.Attach(model, new ProbeOptions
        {
            WindowSize = K, Interval = 5, Output = null, OverheadBudget = null, Probes = [recomputation, reader],
        }, optimizer);
        Steps(model, optimizer, 10, seed: 3, passBatch: true);
        session.Flush();
        Assert.Equal(2, read.Count);
        for (int w = 0; w < read.Count; w++)
            for (int i = 0; i < K; i++)
                for (int c = 0; c < read[w][i].Length; c++)
                    Close.Assert(recomputation.Windows[w][i][c], read[w][i][c], 1e-12, $"window {w}, micro-batch {i}, coordinate {c}", 1e-6);
    }

    private sealed class GradientReader(List<double[][]> read) : TrainingProbe
    {
        public override string Name => "reader";

        public override void OnWindowClosed(ProbeWindowContext window)
        {
            var perParameter = window.ParameterNames.Select(window.Gradients).ToArray();
            read.Add(Enumerable.Range(0, window.WindowSize)
                .Select(i => perParameter.SelectMany(t => t[i].data<double>().ToArray()).ToArray()).ToArray());
        }
    }

    [Fact]
    public void Smoothed_moment_form_values_pool_the_windows_moments_and_the_others_are_means()
    {
        const int K = 5, Windows = 5, N = 3;
        var (session, recomputation) = Train(K, steps: Windows * (K + 2), new ProbeOptions { SmoothingWindows = N });
        using (session)
        {
            session.Flush();
            var history = session.History;
            Assert.Equal(Windows, history.Count);

            // Each window's mean squared norm d and mean inner product s, from the recomputed gradients in double precision.
            var moments = recomputation.Windows.Select(g =>
            {
                double d = 0, s = 0;
                for (int i = 0; i < K; i++)
                    for (int j = 0; j < K; j++)
                    {
                        double dot = g[i].Zip(g[j]).Sum(p => p.First * p.Second);
                        if (i == j) d += dot / K;
                        else s += dot / (K * (K - 1.0));
                    }

                return (D: d, S: s);
            }).ToList();
            double PooledCosine(IEnumerable<int> windows)
            {
                double d = windows.Average(w => moments[w].D), s = windows.Average(w => moments[w].S);
                return s / (s + Math.Max(d - s, 0) / K);
            }

            for (int w = 0; w < Windows; w++)
            {
                var held = Enumerable.Range(0, w + 1).TakeLast(N).ToList();
                // The euclidean cosine: the ratio of the pooled moments, with a jackknife over the windows held (3 or more).
                Close.Assert(PooledCosine(held), history[w].Get(Indicators.Cosine + Indicators.SmoothedSuffix, Geometry.Euclidean), 1e-9,
                    $"window {w}: cosine.smoothed", 1e-3);
                double cosineError = held.Count < 3 ? double.NaN
                    : Jackknife(held.Select(left => PooledCosine(held.Where(x => x != left))).ToArray());
                double published = history[w].Get(Indicators.Cosine + Indicators.SmoothedSuffix + Indicators.StandardErrorSuffix, Geometry.Euclidean);
                if (double.IsNaN(cosineError)) Assert.True(double.IsNaN(published), $"window {w}: a jackknife over {held.Count} windows is undefined");
                else Close.Assert(cosineError, published, 1e-9, $"window {w}: cosine.smoothed.stderr", 1e-4);

                // The Fisher relative regret, pooled the same way: mean noise over mean squared norm of the windows' published values.
                var last = history.Take(w + 1).TakeLast(N).ToList();
                double noise = last.Average(x => x.Get(Indicators.GradientNoise, Geometry.Fisher));
                double norm2 = last.Average(x => Math.Pow(x.Get(Indicators.GradientNorm, Geometry.Fisher), 2));
                Close.Assert(noise / norm2, history[w].Get(Indicators.RelativeRegret + Indicators.SmoothedSuffix, Geometry.Fisher), 1e-9,
                    $"window {w}: regret.relative.smoothed[fisher]", 1e-3);

                // GSNR and the Jensen ratio (not of the moments alone): the mean of the windows' values, errors in quadrature.
                foreach (var (name, geometry) in new[] { (Indicators.Gsnr, Geometry.None), (Indicators.JensenRatio, Geometry.Euclidean) })
                {
                    double mean = last.Average(x => x.Get(name, geometry));
                    double error = Math.Sqrt(last.Sum(x => Math.Pow(x.Get(name + Indicators.StandardErrorSuffix, geometry), 2))) / last.Count;
                    Close.Assert(mean, history[w].Get(name + Indicators.SmoothedSuffix, geometry), 1e-12, $"window {w}: {name}.smoothed", 1e-3);
                    Close.Assert(error, history[w].Get(name + Indicators.SmoothedSuffix + Indicators.StandardErrorSuffix, geometry), 1e-12, $"window {w}: {name}.smoothed.stderr");
                }
            }
        }

        static double Jackknife(double[] leaveOneOut)
        {
            double mean = leaveOneOut.Average();
            return Math.Sqrt((leaveOneOut.Length - 1.0) / leaveOneOut.Length * leaveOneOut.Sum(v => (v - mean) * (v - mean)));
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
            var expected = ReferenceIndicators.FirstOrder(layer, 0.9, scale: K);
            foreach (var name in new[] { Indicators.GradientNorm, Indicators.Cosine, Indicators.RelativeRegret })
                Close.Assert(expected[name], snapshot.Get(name, Geometry.Euclidean, "0.weight"), 1e-9, $"layer {name}", scale: 1);
            Close.Assert(K * ReferenceIndicators.Gsnr(layer, 0), snapshot.Get(Indicators.Gsnr, Geometry.None, "0.weight"), 1e-9, "layer gsnr", 1e-3);
            Assert.NotEqual(snapshot.Get(Indicators.GradientNorm, Geometry.Euclidean), snapshot.Get(Indicators.GradientNorm, Geometry.Euclidean, "0.weight"));
        }
    }

    [Fact]
    public void The_step_family_is_published_beside_the_default_one_only_when_asked_for()
    {
        const int K = 5;
        var (with, _) = Train(K, steps: 2 * (K + 2), new ProbeOptions { StepStatistics = true });
        var (without, _) = Train(K, steps: 2 * (K + 2));
        using (with)
        using (without)
        {
            with.Flush();
            without.Flush();
            Assert.NotNull(with.Windows.Steps);
            Assert.Null(without.Windows.Steps);
            Assert.All(with.History, s => Assert.NotEqual(s.Get(Indicators.Cosine, Geometry.Euclidean), s.Get(StepNames.Step(Indicators.Cosine), Geometry.Euclidean)));
            Assert.All(without.History, s => Assert.False(s.TryGetValue(StepNames.Step(Indicators.Cosine), Geometry.Euclidean, out _)));
        }
    }

    [Fact]
    public void Training_with_the_extra_passes_is_bit_identical_to_training_without_a_session()
    {
        // Batch norm (running statistics) and dropout (random state): the window's passes must leave no trace.
        static nn.Module<Tensor, Tensor> Net()
        {
            torch.manual_seed(3);
            return nn.Sequential(nn.Linear(Inputs, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, Classes));
        }

        Dictionary<string, Tensor> Run(bool probe)
        {
            var model = Net();
            var optimizer = new GcSafeSgd(model.parameters(), 0.1);
            using var session = probe ? ProbeSession.Attach(model, new ProbeOptions { WindowSize = 4, Interval = 4, Output = null, OverheadBudget = null }, optimizer) : null;
            torch.manual_seed(17);   // the dropout stream
            Trainer.Train(model, optimizer, 24, seed: 8, onStep: (loss, x, y) => { if (probe) model.Probe(loss, optimizer, x, y, CrossEntropy); }, task: new Classification(Features: Inputs, Classes: Classes, Batch: Batch));

            session?.Flush();
            if (probe) Assert.Equal(6, session!.History.Count(s => s.TryGetValue(Indicators.Cosine, Geometry.Euclidean, out _)));
            return model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone().DetachFromDisposeScope());
        }

        var with = Run(probe: true);
        var without = Run(probe: false);
        foreach (var (name, tensor) in without)
            Assert.True(tensor.eq(with[name]).all().item<bool>(), $"{name} differs after training with the window's passes");
    }

    [Fact]
    public void Without_the_batch_the_session_says_once_what_it_misses_and_publishes_the_rest()
    {
        var model = Mlp(seed: 2);
        var optimizer = new GcSafeSgd(model.parameters(), 0.1);
        var output = new StringWriter();
        using var session = ProbeSession.Attach(model, new ProbeOptions { WindowSize = 4, Interval = 4, Output = output, OverheadBudget = null }, optimizer);
        // A trainer that never passes the batch: windows close without the micro-batches, at their steps.
        Steps(model, optimizer, 12, seed: 2, passBatch: false);

        var text = output.ToString();
        Assert.Equal(1, text.Split('\n').Count(l => l.Contains("split the closing step's minibatch into K = 4 micro-batches")));
        Assert.Contains("model.Probe(loss, optimizer, input, target, lossFunction.call)", text);
        Assert.Equal(0, session.FailureCount);
        session.Flush();
        Assert.Equal(3, session.History.Count);
        Assert.All(session.History, s => Assert.False(s.TryGetValue(Indicators.Cosine, Geometry.Euclidean, out _)));
        Assert.All(session.History, s => Assert.True(s.TryGetValue(Indicators.Loss, Geometry.None, out _)));
    }

    [Fact]
    public void A_window_waits_for_the_next_step_that_passes_its_batch()
    {
        // Steps 0 and 1 pass the batch but step 2, where the second window opens, passes only the loss (an evaluation
        // branch, say): that window waits and closes at step 3.
        const int K = 4;
        var model = Mlp(seed: 2);
        var optimizer = new GcSafeSgd(model.parameters(), 0.1);
        using var session = ProbeSession.Attach(model, new ProbeOptions { WindowSize = K, Interval = 2, Output = null, OverheadBudget = null }, optimizer);
        int step = 0;
        Trainer.Train(model, optimizer, 4, seed: 4, (loss, x, y) =>
        {
            if (step++ == 2) model.Probe(loss, optimizer);
            else model.Probe(loss, optimizer, x, y, CrossEntropy);
        }, new Classification(Inputs, Classes, Batch, ScalarType.Float64));

        session.Flush();
        Assert.Equal(2, session.History.Count);
        Assert.Equal([1L, 4L], session.History.Select(s => s.Step));   // the second window closed at step 3, not 2
        Assert.All(session.History, s => Assert.True(s.TryGetValue(Indicators.Cosine, Geometry.Euclidean, out _)));
    }
}
