using TorchSharp;
using TrainingProbes.Capture;
using TrainingProbes.Curvature;
using TrainingProbes.Tests.Curvature;
using TrainingProbes.Tests.IndicatorsTests;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.Probes;

public sealed class FixedPointTests
{
    /// <summary>A small network with dropout and batch norm: both consume or change state in a forward pass.</summary>
    private static nn.Module<Tensor, Tensor> Network(int seed)
    {
        torch.manual_seed(seed);
        return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3));
    }

    [Fact]
    public void Training_with_active_windows_gives_bit_identical_parameters_and_buffers()
    {
        var watched = Network(3);
        var plain = Network(3);
        var fixedPoint = new FixedPointProbe(new FixedPointOptions
        {
            Loss = (output, target) => nn.functional.cross_entropy(output, target), WindowSize = 4, Every = 1, PowerIterations = 5, TraceSamples = 4,
        });
        var recomputed = new MinibatchGradients(watched);

        using (var session = ProbeSession.Attach(watched, new ProbeOptions { WindowSize = 2, Interval = 5, Output = null, OverheadBudget = null, Probes = [fixedPoint, recomputed] }))
        {
            Train(watched, 30, 8, (loss, x, y) => session.Step(loss, x, y));
            Assert.Equal(0, session.FailureCount);
            Assert.Equal(6, fixedPoint.Runs);
            session.Flush();
            var last = session.Latest!;

            // The fixed-point window's first-order values against the same four minibatch gradients, taken again by the test
            // (autograd at the window's theta, the random state the probe started from) and compared in double precision.
            var g = recomputed.Last!;
            double Dot(int i, int j) => g[i].Zip(g[j]).Sum(p => p.First * p.Second);
            var pairs = (from i in Enumerable.Range(0, 4) from j in Enumerable.Range(0, 4) where i != j select Dot(i, j) / Math.Sqrt(Dot(i, i) * Dot(j, j))).ToList();
            double cosine = pairs.Average();
            double meanNorm = Enumerable.Range(0, 4).Average(i => Math.Sqrt(Dot(i, i)));
            Assert.Equal(cosine, last.Get("fixed_point.gradient.cosine", Geometry.Euclidean), 1e-5);
            Assert.Equal(meanNorm, last.Get("fixed_point.gradient.norm", Geometry.Euclidean), meanNorm * 1e-5);
            foreach (var name in new[] { "fixed_point.regret.finite", "fixed_point.flatness.contrastive_eps" })
                Assert.True(double.IsFinite(last.Get(name, Geometry.Fisher)), name);
            Assert.True(double.IsFinite(last.Get(Indicators.CurvatureTrace, Geometry.Euclidean)));
        }

        Train(plain, 30, 8, (_, _, _) => { });

        foreach (var ((name, a), (_, b)) in watched.named_parameters().Zip(plain.named_parameters()))
            Assert.True(a.allclose(b, rtol: 0, atol: 0), $"parameter {name} differs after training with fixed-point windows");
        foreach (var ((name, a), (_, b)) in watched.named_buffers().Zip(plain.named_buffers()))
            Assert.True(a.allclose(b, rtol: 0, atol: 0), $"buffer {name} differs after training with fixed-point windows");
        Assert.True(watched.training);
    }

    /// <summary>
    /// The fixed-point probe's minibatch gradients taken again after it: the closing batch in four chunks, one
    /// autograd pass each at the same theta, from the random state the probe started from (its guard restored it).
    /// </summary>
    private sealed class MinibatchGradients(nn.Module<Tensor, Tensor> model) : TrainingProbe
    {
        public override string Name => "recomputed";

        public double[][]? Last { get; private set; }

        public override void OnWindowClosed(ProbeWindowContext window)
        {
            using var guard = new ModelStateGuard(model);
            var parameters = model.parameters().ToArray();
            var inputs = window.Input!.detach().chunk(4, 0);
            var targets = window.Target!.detach().chunk(4, 0);
            var gradients = new double[4][];
            using (torch.enable_grad())
                for (int i = 0; i < 4; i++)
                {
                    var loss = nn.functional.cross_entropy(model.call(inputs[i]), targets[i]);
                    var grads = torch.autograd.grad([loss], parameters);
                    gradients[i] = grads.SelectMany(t => t.to(ScalarType.Float64).flatten().data<double>().ToArray()).ToArray();
                }
            Last = gradients;
        }
    }

    private static void Train(nn.Module<Tensor, Tensor> model, int steps, int seed, Action<Tensor, Tensor, Tensor> probe)
    {
        var optimizer = new GcSafeAdam(model.parameters(), 0.01);
        torch.manual_seed(seed);   // dropout draws from the global generator: both runs start it alike
        Trainer.Train(model, optimizer, steps, seed, probe, new Classification(Features: 6));
    }

    private static List<(Tensor, Tensor)> RegressionBatches(int k, int size, int seed, out double[][] xs, out double[] ys)
    {
        var generator = new Generator((ulong)seed);
        var batches = new List<(Tensor, Tensor)>();
        var allX = new List<double[]>();
        var allY = new List<double>();
        for (int i = 0; i < k; i++)
        {
            var x = torch.randn([size, 3], dtype: ScalarType.Float64, generator: generator);
            var y = (torch.rand([size], dtype: ScalarType.Float64, generator: generator) > 0.5).to(ScalarType.Float64);
            batches.Add((x, y));
            var xd = x.data<double>().ToArray();
            for (int r = 0; r < size; r++) allX.Add(xd.Skip(r * 3).Take(3).ToArray());
            allY.AddRange(y.data<double>().ToArray());
        }
        xs = allX.ToArray();
        ys = allY.ToArray();
        return batches;
    }

    private static nn.Module<Tensor, Tensor> Logistic()
    {
        torch.manual_seed(5);
        var model = nn.Linear(3, 1).to(ScalarType.Float64);
        using (torch.no_grad())
        {
            model.weight!.copy_(torch.tensor(new[] { 0.7, -1.2, 0.4 }, dtype: ScalarType.Float64).reshape(1, 3));
            model.bias!.copy_(torch.tensor(new[] { 0.1 }, dtype: ScalarType.Float64));
        }
        return model;
    }

    private static Tensor LogisticLoss(Tensor output, Tensor target) =>
        nn.functional.binary_cross_entropy_with_logits(output.squeeze(1), target);

    [Fact]
    public void Logistic_regression_gradients_and_hessian_match_the_closed_form()
    {
        const int K = 4, Size = 16;
        var model = Logistic();
        var batches = RegressionBatches(K, Size, 21, out var xs, out var ys);
        var snapshot = FixedPointProbe.Measure(model, new FixedPointOptions
        {
            Loss = LogisticLoss, Batches = batches, WindowSize = K, FiniteRadius = false, PowerIterations = 200, PowerTolerance = 1e-10,
            TraceSamples = 400, TraceTolerance = 0.01, Geometries = Geometry.Euclidean,
        });

        // Closed form in double: for sample r with z = [x, 1], s = sigmoid(w.z), the gradient is (s - y) z and the Hessian s (1 - s) z z^T.
        double[] w = [0.7, -1.2, 0.4, 0.1];
        var gradients = new double[K][];
        var hessian = new double[4, 4];
        for (int i = 0; i < K; i++)
        {
            gradients[i] = new double[4];
            for (int r = i * Size; r < (i + 1) * Size; r++)
            {
                double[] z = [.. xs[r], 1.0];
                double s = 1 / (1 + Math.Exp(-z.Select((v, c) => v * w[c]).Sum()));
                for (int c = 0; c < 4; c++)
                {
                    gradients[i][c] += (s - ys[r]) * z[c] / Size;
                    for (int d = 0; d < 4; d++) hessian[c, d] += s * (1 - s) * z[c] * z[d] / (Size * K);
                }
            }
        }

        var expected = ReferenceIndicators.FirstOrder(gradients, 0.9);
        foreach (var (name, value) in expected)
            Close.Assert(value, snapshot.Get("fixed_point." + name, Geometry.Euclidean), 1e-9, name, scale: expected[Indicators.GradientNorm]);

        double trace = Enumerable.Range(0, 4).Sum(c => hessian[c, c]);
        double top = CurvatureTestMath.JacobiEigenvalues(hessian).Max();
        Close.Assert(top, snapshot.Get(Indicators.CurvatureLambdaMax, Geometry.Euclidean), 1e-6, "lambda_max");
        Close.Assert(top, snapshot.Get(Indicators.CurvatureLambdaMaxMagnitude, Geometry.Euclidean), 1e-6, "lambda_max magnitude");
        double halfWidth = snapshot.Get(Indicators.CurvatureTraceHalfWidth, Geometry.Euclidean);
        Assert.InRange(snapshot.Get(Indicators.CurvatureTrace, Geometry.Euclidean), trace - 3 * halfWidth, trace + 3 * halfWidth);

        // Contrastive curvature >= 1 (lambda_max is convex), with the per-minibatch Hessians computed in closed form too.
        double sum = 0;
        for (int i = 0; i < K; i++)
        {
            var hi = new double[4, 4];
            for (int r = i * Size; r < (i + 1) * Size; r++)
            {
                double[] z = [.. xs[r], 1.0];
                double s = 1 / (1 + Math.Exp(-z.Select((v, c) => v * w[c]).Sum()));
                for (int c = 0; c < 4; c++)
                    for (int d = 0; d < 4; d++) hi[c, d] += s * (1 - s) * z[c] * z[d] / Size;
            }
            sum += CurvatureTestMath.JacobiEigenvalues(hi).Max();
        }
        double contrastive = sum / K / top;
        Assert.True(contrastive >= 1);
        Close.Assert(contrastive, snapshot.Get(Indicators.CurvatureContrastive, Geometry.Euclidean), 1e-5, "contrastive curvature");
    }

    [Fact]
    public void Finite_radius_regret_converges_to_the_first_order_formula_as_the_radius_shrinks()
    {
        const int K = 4;
        var model = Logistic();
        var batches = RegressionBatches(K, 32, 33, out _, out _);
        var gaps = new List<double>();
        foreach (double radius in new[] { 0.3, 0.03, 0.003 })
        {
            var snapshot = FixedPointProbe.Measure(model, new FixedPointOptions
            {
                Loss = LogisticLoss, Batches = batches, WindowSize = K, Curvature = false, Radius = radius, RadiusIsRelative = false,
            });
            foreach (var geometry in new[] { Geometry.Euclidean, Geometry.Fisher, Geometry.Adaptive })
                Assert.Equal(radius, snapshot.Get("fixed_point." + Indicators.Radius, geometry), 12);
            double firstOrder = snapshot.Get("fixed_point." + Indicators.Regret, Geometry.Euclidean);
            double finite = snapshot.Get("fixed_point." + Indicators.FiniteRegret, Geometry.Euclidean);
            gaps.Add(Math.Abs(finite - firstOrder) / firstOrder);
        }

        // The gap is a curvature term, linear in the radius: ten times smaller radius, about ten times smaller gap.
        Assert.True(gaps[2] < 2e-3, $"relative gap at the smallest radius: {gaps[2]}");
        Assert.InRange(gaps[0] / gaps[1], 5, 20);
        Assert.InRange(gaps[1] / gaps[2], 5, 20);
    }

    [Fact]
    public void Measuring_leaves_the_model_as_it_was_and_requires_batches()
    {
        var model = Network(4);
        model.eval();
        var before = model.parameters().Select(p => p.detach().clone()).ToList();
        var generator = new Generator(2);
        var batches = Enumerable.Range(0, 3).Select(_ => (torch.randn([8, 6], generator: generator), torch.randint(0, 3, [8], generator: generator))).ToList();
        var options = new FixedPointOptions { Loss = (o, t) => nn.functional.cross_entropy(o, t), Batches = batches, WindowSize = 3, PowerIterations = 3, TraceSamples = 3 };

        var snapshot = FixedPointProbe.Measure(model, options);

        Assert.False(model.training);
        Assert.All(model.parameters().Zip(before), pair => Assert.True(pair.First.allclose(pair.Second, rtol: 0, atol: 0)));
        Assert.All(model.parameters(), p => Assert.True(p.grad is null || p.grad.IsInvalid));
        Assert.Contains(snapshot.Values, v => v.Name == "fixed_point.gradient.cosine");
        Assert.Contains("Batches", Assert.Throws<ArgumentException>(() =>
            FixedPointProbe.Measure(model, new FixedPointOptions { Loss = (o, t) => nn.functional.cross_entropy(o, t) })).Message);
    }

    /// <summary>A two-layer network, optionally with a third layer its forward never calls (an unused parameter).</summary>
    private sealed class TwoLayer : nn.Module<Tensor, Tensor>
    {
        public readonly TorchSharp.Modules.Linear First;
        public readonly TorchSharp.Modules.Linear Second;
        public readonly TorchSharp.Modules.Linear? Unused;

        public TwoLayer(int seed, bool unusedLayer) : base("two_layer")
        {
            torch.manual_seed(seed);
            First = nn.Linear(6, 16);
            Second = nn.Linear(16, 3);
            if (unusedLayer) Unused = nn.Linear(16, 16);   // created last: the other two are initialized alike
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => Second.call(nn.functional.relu(First.call(x)));
    }

    private static Tensor CrossEntropy(Tensor output, Tensor target) => nn.functional.cross_entropy(output, target);

    // Curvature values compared between two float32 models that differ only in what the probe watches. The operators
    // agree on the shared blocks, the other blocks are exact zeros and draw no random numbers, so the estimates see
    // the same numbers; only the order of float32 sums may differ (a norm or a dot product with extra exact zeros, or
    // the same terms at other offsets), about 1e-7 relative per operation, carried through tens of power iterations
    // and averaged Hutchinson samples. (On this machine the values agree bit for bit.) 1e-5 relative covers that with
    // a margin and is far below what a wrong block or other random draws change (several percent for the trace).
    private const double Float32Curvature = 1e-5;

    [Fact]
    public void Curvature_with_an_unused_parameter_equals_curvature_without_it()
    {
        var generator = new Generator(12);
        var batches = Enumerable.Range(0, 4).Select(_ => (torch.randn([16, 6], generator: generator), torch.randint(0, 3, [16], generator: generator))).ToList();
        var options = new FixedPointOptions
        {
            Loss = CrossEntropy, Batches = batches, WindowSize = 4, FiniteRadius = false, PowerIterations = 100, PowerTolerance = 1e-6, TraceSamples = 50,
        };
        var with = new TwoLayer(9, unusedLayer: true);
        var without = new TwoLayer(9, unusedLayer: false);
        Assert.Equal(6, with.parameters().Count());

        // Guard first: were the unused layer's Hessian-vector block still an expanded stride-0 view, the power
        // iteration's in-place update would abort this process instead of failing the test.
        using (var scope = torch.NewDisposeScope())
        {
            using var op = new HessianOperator(CrossEntropy(with.call(batches[0].Item1), batches[0].Item2), with.parameters().ToArray());
            var hv = op.Apply(with.parameters().Select(p => torch.ones_like(p)).ToArray());
            Assert.All(hv, block => Assert.True(block.is_contiguous()));
            Assert.All(hv.Skip(4), block => Assert.Equal(0, block.abs().max().item<float>()));
        }

        var a = FixedPointProbe.Measure(with, options);
        var b = FixedPointProbe.Measure(without, options);
        foreach (var name in new[] { Indicators.CurvatureLambdaMax, Indicators.CurvatureLambdaMaxMagnitude, Indicators.CurvatureTrace, Indicators.CurvatureContrastive })
        {
            double expected = b.Get(name, Geometry.Euclidean);
            Assert.True(double.IsFinite(expected) && expected != 0, $"{name} = {expected} without the unused layer");
            Close.Assert(expected, a.Get(name, Geometry.Euclidean), Float32Curvature, name);
        }
    }

    [Fact]
    public void A_parameter_frozen_after_attach_gives_the_values_of_a_model_that_does_not_watch_it()
    {
        // Run A watches every parameter and freezes First.weight right after attach; run B freezes it alike (the same
        // training) but leaves it out by ParameterFilter. A's probe must differentiate only what still trains.
        List<ProbeSnapshot> Run(bool filter)
        {
            var model = new TwoLayer(13, unusedLayer: false);
            var probe = new FixedPointProbe(new FixedPointOptions
            {
                Loss = CrossEntropy, WindowSize = 4, Every = 1, FiniteRadius = false, PowerIterations = 100, PowerTolerance = 1e-6, TraceSamples = 50,
            });
            using var session = ProbeSession.Attach(model, new ProbeOptions
            {
                WindowSize = 2, Interval = 5, Output = null, OverheadBudget = null, Probes = [probe],
                ParameterFilter = filter ? name => name != "First.weight" : null,
            });
            Assert.Equal(filter ? 3 : 4, session.ParameterNames.Count);
            model.First.weight!.requires_grad_(false);
            Train(model, 20, 14, (loss, x, y) => session.Step(loss, x, y));
            session.Flush();
            Assert.True(session.FailureCount == 0, string.Join(" / ", session.Latest!.Failures));
            Assert.Equal(4, probe.Runs);
            return session.History.Where(h => h.Values.Any(v => v.Name == FixedPointProbe.Prefix + Indicators.Cosine)).ToList();
        }

        var frozen = Run(filter: false);
        var filtered = Run(filter: true);
        Assert.Equal(4, frozen.Count);
        Assert.Equal(filtered.Select(h => h.Step), frozen.Select(h => h.Step));
        foreach (var (a, b) in frozen.Zip(filtered))
        {
            // A cosine lies in [-1, 1]: its dot products may differ by float32 summation order only (about 1e-7 each).
            Close.Assert(b.Get(FixedPointProbe.Prefix + Indicators.Cosine, Geometry.Euclidean),
                a.Get(FixedPointProbe.Prefix + Indicators.Cosine, Geometry.Euclidean), 1e-6, $"cosine at step {a.Step}", scale: 1);
            foreach (var name in new[] { Indicators.CurvatureLambdaMax, Indicators.CurvatureTrace, Indicators.CurvatureContrastive })
                Close.Assert(b.Get(name, Geometry.Euclidean), a.Get(name, Geometry.Euclidean), Float32Curvature, $"{name} at step {a.Step}");
        }
    }

    [Fact]
    public void Gradients_skip_frozen_parameters_and_refuse_a_loss_without_graph_before_any_native_call()
    {
        var a = torch.tensor(new double[] { 1, 2 }).requires_grad_(true);
        var b = torch.tensor(new double[] { 3 }).requires_grad_(true);
        var loss = a.pow(2).sum() * b.sum();
        b.requires_grad_(false);   // frozen after the graph was built: autograd.grad on it would abort the process
        var gradients = WatchedGradients.Of(loss, [a, b], "test");
        Assert.Null(gradients[1]);
        Assert.Equal(new double[] { 6, 12 }, gradients[0]!.data<double>().ToArray());

        var late = a.pow(2).sum();   // a graph built while a still trains
        a.requires_grad_(false);
        var none = Assert.Throws<InvalidOperationException>(() => WatchedGradients.Of(late, [a, b], "test"));
        Assert.Contains("none of the 2 watched parameters requires a gradient", none.Message);

        a.requires_grad_(true);
        Tensor detached;
        using (torch.no_grad()) detached = a.pow(2).sum();
        Assert.Contains("does not require a gradient", Assert.Throws<InvalidOperationException>(() => WatchedGradients.Of(detached, [a, b], "test")).Message);
        Assert.Contains("scalar", Assert.Throws<InvalidOperationException>(() => WatchedGradients.Of(a.pow(2), [a, b], "test")).Message);

        // Through the probe: a loss function that detaches its result fails the window with that message.
        var generator = new Generator(2);
        var batches = Enumerable.Range(0, 2).Select(_ => (torch.randn([8, 6], generator: generator), torch.randint(0, 3, [8], generator: generator))).ToList();
        var error = Assert.Throws<InvalidOperationException>(() => FixedPointProbe.Measure(new TwoLayer(1, unusedLayer: false),
            new FixedPointOptions { Loss = (o, t) => CrossEntropy(o, t).detach(), Batches = batches, WindowSize = 2 }));
        Assert.Contains("does not require a gradient", error.Message);
    }
}
