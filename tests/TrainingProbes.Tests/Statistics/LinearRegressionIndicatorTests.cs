using static TrainingProbes.Tests.StepNames;
using TorchSharp;
using static TorchSharp.torch;
using TrainingProbes.Optimizers;

namespace TrainingProbes.Tests.IndicatorsTests;

/// <summary>
/// Linear regression with SGD: every indicator of the step family (the trainer's own K step gradients,
/// <see cref="ProbeOptions.StepStatistics"/>) of every window, in every geometry, against a replay of the training in plain
/// doubles with hand-derived gradients.
/// </summary>
public sealed class LinearRegressionIndicatorTests
{
    private const double Tolerance = 1e-9;
    private const int Inputs = 5;
    private const int Batch = 4;
    private const double LearningRate = 0.05;

    [Theory]
    // K, N, windows, FisherDecay, RegretQuantile, AdaptiveEta, GsnrEpsilon
    [InlineData(4, 6, 3, 0.9, 0.9, 0.0, 0.0)]
    [InlineData(2, 3, 3, 0.9, 0.9, 0.0, 0.0)]     // K = 2: a single pair, both orders
    [InlineData(5, 5, 2, 0.5, 0.75, 0.1, 1e-3)]   // back-to-back windows, non-default options
    [InlineData(3, 4, 3, 0.0, 0.3, 0.0, 0.0)]     // FisherDecay 0: the current window only
    public void EveryIndicatorMatchesTheHandReplay(
        int k, int n, int windows, double decay, double quantile, double eta, double gsnrEpsilon)
    {
        var options = new ProbeOptions
        {
            WindowSize = k, Interval = n, Output = null, OverheadBudget = null, FisherDecay = decay, RegretQuantile = quantile,
            AdaptiveEta = eta, GsnrEpsilon = gsnrEpsilon, StepStatistics = true,
        };
        TrainAndCompare(options, windows, seed: 1000 + k * 10 + n);
    }

    [Fact]
    public void ParameterWithoutAGradientOnSomeStepsCountsAsZeroThere()
    {
        // The extra parameter takes part in the forward pass on every third step only: on the other steps of a
        // window it has no fresh gradient (zero_grad cleared it), and the window must hold zeros for it there.
        TrainAndCompare(new ProbeOptions { WindowSize = 4, Interval = 5, Output = null, OverheadBudget = null, StepStatistics = true }, windows: 3, seed: 2024, usesUnused: step => step % 3 == 1);
    }

    private static void TrainAndCompare(ProbeOptions options, int windows, int seed, Func<int, bool>? usesUnused = null)
    {
        int k = options.WindowSize, n = options.Interval;
        int steps = windows * n;
        var data = new RegressionData(Inputs, Batch, steps, seed);

        torch.manual_seed(17);
        using var model = new LinearRegressionModel(Inputs, data.UnusedValues);
        var (weight, bias) = RegressionTraining.InitialParameters(model);
        var optimizer = new GcSafeSgd(model.parameters(), LearningRate);
        using (var session = ProbeSession.Attach(model, options, optimizer))
        {
            RegressionTraining.Train(model, session, optimizer, data, steps, usesUnused);
            var expected = RegressionReplay.Run(data, weight, bias, LearningRate, steps, options, usesUnused);

            session.Flush();
            var history = session.History;
            Assert.Equal(windows, expected.Count);
            Assert.Equal(windows, history.Count);
            Assert.Equal(0, session.FailureCount);
            for (int w = 0; w < windows; w++)
            {
                var snapshot = history[w];
                Assert.Equal(w, snapshot.Window);
                Assert.Equal((long)w * n + k, snapshot.Step);
                AssertWindow(expected[w], snapshot, k, $"K={k} N={n} window {w}");
                Close.Assert(LearningRate, snapshot.Get(Indicators.LearningRate), Tolerance, "learning rate");
            }
        }

        // theta moved: the window indicators above were taken on a moving model, as in real training.
        Assert.NotEqual(weight[0], model.Linear.weight!.data<double>()[0]);
    }

    [Fact]
    public void UnusedParameterIsWatchedAndFrozenParameterIsNot()
    {
        var data = new RegressionData(Inputs, Batch, steps: 1, seed: 3);
        using var model = new LinearRegressionModel(Inputs, data.UnusedValues);
        using var session = ProbeSession.Attach(model, new ProbeOptions { WindowSize = 2, Interval = 2, Output = null, OverheadBudget = null });

        var all = model.named_parameters().Select(p => p.name).ToArray();
        Assert.Contains(LinearRegressionModel.FrozenName, all);
        Assert.Contains(LinearRegressionModel.UnusedName, session.ParameterNames);
        Assert.Contains(LinearRegressionModel.WeightName, session.ParameterNames);
        Assert.Contains(LinearRegressionModel.BiasName, session.ParameterNames);
        Assert.DoesNotContain(LinearRegressionModel.FrozenName, session.ParameterNames);
        Assert.Equal(3, session.ParameterNames.Count);
    }

    private static void AssertMaybeNaN(double expected, double actual, string what, double scale)
    {
        if (double.IsNaN(expected)) Assert.True(double.IsNaN(actual), $"{what}: expected NaN (K too small), got {actual}");
        else Close.Assert(expected, actual, Tolerance, what, scale);
    }

    internal static void AssertWindow(ExpectedWindow expected, ProbeSnapshot snapshot, int k, string where)
    {
        foreach (var (geometry, values) in expected.PerGeometry)
        {
            foreach (var name in ReferenceIndicators.FirstOrderNames)
            {
                // Values that are differences of comparable terms are compared on the scale of those terms.
                double scale = name switch
                {
                    Indicators.Regret or Indicators.RegretUpper => values[Indicators.GradientNorm],
                    Indicators.Cosine => 1,
                    _ => 0,
                };
                Close.Assert(values[name], snapshot.Get(Step(name), geometry), Tolerance, $"{where}: {name} [{geometry}]", scale);
                double error = expected.PerGeometryErrors[geometry][name];
                double published = snapshot.Get(Step(name + Indicators.StandardErrorSuffix), geometry);
                if (double.IsNaN(error)) Assert.True(double.IsNaN(published), $"{where}: {name}.stderr [{geometry}] should be NaN at K = {k}, got {published}");
                else Close.Assert(error, published, Tolerance, $"{where}: {name}.stderr [{geometry}]", scale * 1e-3);
            }
        }

        AssertMaybeNaN(expected.Gsnr, snapshot.Get(Step(Indicators.Gsnr), Geometry.None), $"{where}: gsnr", 1e-3);
        AssertMaybeNaN(-k * expected.Gsnr, snapshot.Get(Step(Indicators.EbCriterion), Geometry.None), $"{where}: eb_criterion", 1e-3);
        AssertMaybeNaN(expected.GsnrError, snapshot.Get(Step(Indicators.Gsnr + Indicators.StandardErrorSuffix), Geometry.None), $"{where}: gsnr.stderr", 1e-3);
        AssertMaybeNaN(k * expected.GsnrError, snapshot.Get(Step(Indicators.EbCriterion + Indicators.StandardErrorSuffix), Geometry.None), $"{where}: eb_criterion.stderr", 1e-3);
        // The drift since the previous window's close; the first window has none.
        if (double.IsNaN(expected.Drift)) Assert.False(snapshot.TryGetValue(Indicators.ParameterDrift, Geometry.None, out _), $"{where}: drift at the first window");
        else Close.Assert(expected.Drift, snapshot.Get(Indicators.ParameterDrift, Geometry.None), Tolerance, $"{where}: drift");
        Close.Assert(expected.Loss, snapshot.Get(Indicators.Loss, Geometry.None), Tolerance, $"{where}: loss");
    }
}
