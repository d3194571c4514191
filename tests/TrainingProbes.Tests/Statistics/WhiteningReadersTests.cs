using TorchSharp;
using TrainingProbes.Tests.Curvature;
using TrainingProbes.Tests.IndicatorsTests;
using static TorchSharp.torch;
using static TrainingProbes.Tests.StepNames;

namespace TrainingProbes.Tests.StatisticsTests;

/// <summary>
/// Every reader of the whitening D sees the same D, the one computed by hand in double: the step statistics
/// (<c>step.*</c>), the first-order family of a fixed-point window (<c>fixed_point.*</c>), the fixed-point window's radius
/// <c>eps = Radius ||D^-1 theta||</c> and the invariant curvature <c>lambda_max(D Hbar D)</c>. The Fisher floor binds
/// on one coordinate, and each reader's value without the floor is far outside the tolerance: a reader that ignored
/// the floor would fail here.
/// </summary>
public sealed class WhiteningReadersTests
{
    private const int K = 4, Size = 16;
    private const double Decay = 0.9, Floor = 0.1, Eta = 0.05, Radius = 1e-3;
    private static readonly double[] Theta = [0.7, -1.2, 0.4, 0.1];   // weight [1, 3], then bias [1]

    /// <summary>Logistic regression; its third feature is a thousand times smaller, so its weight's Fisher is tiny.</summary>
    private static List<(Tensor Input, Tensor Target)> Batches(out double[][] xs, out double[] ys)
    {
        var generator = new Generator(41);
        var batches = new List<(Tensor, Tensor)>();
        var allX = new List<double[]>();
        var allY = new List<double>();
        for (int i = 0; i < K; i++)
        {
            var x = torch.randn([Size, 3], dtype: ScalarType.Float64, generator: generator) * torch.tensor(new[] { 1.0, 1.0, 1e-3 }, dtype: ScalarType.Float64);
            var y = (torch.rand([Size], dtype: ScalarType.Float64, generator: generator) > 0.5).to(ScalarType.Float64);
            batches.Add((x.DetachFromDisposeScope(), y.DetachFromDisposeScope()));
            var values = x.data<double>().ToArray();
            for (int r = 0; r < Size; r++) allX.Add(values[(r * 3)..(r * 3 + 3)]);
            allY.AddRange(y.data<double>().ToArray());
        }

        xs = allX.ToArray();
        ys = allY.ToArray();
        return batches;
    }

    private static nn.Module<Tensor, Tensor> Logistic()
    {
        var model = nn.Linear(3, 1).to(ScalarType.Float64);
        using (torch.no_grad())
        {
            model.weight!.copy_(torch.tensor(Theta[..3], dtype: ScalarType.Float64).reshape(1, 3));
            model.bias!.copy_(torch.tensor(Theta[3..], dtype: ScalarType.Float64));
        }

        return model;
    }

    private static Tensor Loss(Tensor output, Tensor target) => nn.functional.binary_cross_entropy_with_logits(output.squeeze(1), target);

    /// <summary>Per minibatch gradient (s - y) z and pooled Hessian s (1 - s) z z^T, z = [x, 1], in closed form.</summary>
    private static (double[][] Gradients, double[,] Hessian) ClosedForm(double[][] xs, double[] ys)
    {
        var gradients = new double[K][];
        var hessian = new double[4, 4];
        for (int i = 0; i < K; i++)
        {
            gradients[i] = new double[4];
            for (int r = i * Size; r < (i + 1) * Size; r++)
            {
                double[] z = [.. xs[r], 1.0];
                double s = 1 / (1 + Math.Exp(-z.Select((v, c) => v * Theta[c]).Sum()));
                for (int c = 0; c < 4; c++)
                {
                    gradients[i][c] += (s - ys[r]) * z[c] / Size;
                    for (int d = 0; d < 4; d++) hessian[c, d] += s * (1 - s) * z[c] * z[d] / (Size * K);
                }
            }
        }

        return (gradients, hessian);
    }

    /// <summary>
    /// D = 1/sqrt(max(F, floor) / (1 - decay)) where F &gt; 0, after one window: F = (1 - decay) mean_i g_i^2, floor =
    /// floorFraction x the mean F of the weight (coordinates 0..2) or of the bias (coordinate 3).
    /// </summary>
    private static double[] FisherD(double[][] g, double floorFraction)
    {
        var f = Enumerable.Range(0, 4).Select(c => (1 - Decay) * g.Average(gi => gi[c] * gi[c])).ToArray();
        double weightFloor = floorFraction * f[..3].Average(), biasFloor = floorFraction * f[3];
        return f.Select((v, c) => v > 0 ? 1 / Math.Sqrt(Math.Max(v, c < 3 ? weightFloor : biasFloor) / (1 - Decay)) : 0).ToArray();
    }

    private static double TopOfScaled(double[,] h, double[] d)
    {
        var m = new double[4, 4];
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 4; b++) m[a, b] = d[a] * h[a, b] * d[b];
        return CurvatureTestMath.JacobiEigenvalues(m).Max();
    }

    private static double ScaledThetaNorm(double[] d) =>
        Math.Sqrt(Theta.Select((t, c) => d[c] > 0 ? t / d[c] * (t / d[c]) : 0).Sum());

    [Fact]
    public void Step_statistics_fixed_point_windows_and_invariant_curvature_read_the_same_floored_D()
    {
        var batches = Batches(out var xs, out var ys);
        var (g, h) = ClosedForm(xs, ys);
        var fixedPoint = new FixedPointProbe(new FixedPointOptions
        {
            Loss = Loss, Batches = batches, WindowSize = K, Every = 1, Radius = Radius, RadiusIsRelative = true,
            PowerIterations = 500, PowerTolerance = 1e-12, TraceSamples = 4,
        });

        // No optimizer step: the step window's K step gradients are the K minibatch gradients at theta, as in the fixed-point window.
        var model = Logistic();
        var options = new ProbeOptions
        {
            WindowSize = K, Interval = K, Output = null, OverheadBudget = null, FisherDecay = Decay, FisherFloor = Floor, AdaptiveEta = Eta, StepStatistics = true,
            Probes = [fixedPoint],
        };
        ProbeSnapshot snapshot;
        using (var session = ProbeSession.Attach(model, options))
        {
            foreach (var (x, y) in batches)
            {
                using var scope = torch.NewDisposeScope();
                model.zero_grad();
                var loss = Loss(model.call(x), y);
                loss.backward();
                session.Step(loss);
            }

            Assert.Equal(0, session.FailureCount);
            Assert.Equal(1, fixedPoint.Runs);
            session.Flush();
            snapshot = session.Latest!;
        }

        var fisher = FisherD(g, Floor);
        var unfloored = FisherD(g, 0);
        Assert.True(unfloored[2] > 3 * fisher[2], "test setup: the floor should bind on the third weight");
        var adaptive = Theta.Select(t => Math.Abs(t) + Eta).ToArray();

        foreach (var (geometry, d, without) in new[] { (Geometry.Fisher, fisher, unfloored), (Geometry.Adaptive, adaptive, adaptive) })
        {
            string what = geometry.ToName();

            // The first-order family, of the step window and of the fixed-point one.
            var expected = ReferenceIndicators.FirstOrder(ReferenceIndicators.Whiten(g, d), options.RegretQuantile);
            double scale = expected[Indicators.GradientNorm];
            foreach (var (name, value) in expected)
            {
                Close.Assert(value, snapshot.Get(Step(name), geometry), 1e-9, $"{Step(name)} [{what}]", scale);
                Close.Assert(value, snapshot.Get(FixedPointProbe.Prefix + name, geometry), 1e-9, $"{FixedPointProbe.Prefix}{name} [{what}]", scale);
            }

            // The fixed-point window's radius and the invariant curvature.
            double radius = Radius * ScaledThetaNorm(d);
            Close.Assert(radius, snapshot.Get(FixedPointProbe.Prefix + Indicators.Radius, geometry), 1e-9, $"radius [{what}]");
            double top = TopOfScaled(h, d);
            Assert.Equal(1.0, snapshot.Get(Indicators.CurvatureConverged, geometry));
            Close.Assert(top, snapshot.Get(Indicators.CurvatureLambdaMax, geometry), 1e-6, $"lambda_max(D H D) [{what}]");

            if (geometry != Geometry.Fisher) continue;
            // Without the floor each of them would be far outside those tolerances.
            var expectedWithout = ReferenceIndicators.FirstOrder(ReferenceIndicators.Whiten(g, without), options.RegretQuantile);
            Assert.True(Close.RelativeDifference(expectedWithout[Indicators.GradientNorm], expected[Indicators.GradientNorm]) > 1e-3, "gradient norm without the floor");
            Assert.True(Close.RelativeDifference(Radius * ScaledThetaNorm(without), radius) > 1e-4, "radius without the floor");
            Assert.True(Close.RelativeDifference(TopOfScaled(h, without), top) > 1e-3, "lambda_max without the floor");
        }

        // And the euclidean geometry has no D: its radius is Radius ||theta||.
        Close.Assert(Radius * ReferenceIndicators.Norm(Theta), snapshot.Get(FixedPointProbe.Prefix + Indicators.Radius, Geometry.Euclidean), 1e-12, "radius [euclidean]");
    }
}
