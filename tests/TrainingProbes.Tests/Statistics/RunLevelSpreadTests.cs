using TorchSharp;
using TrainingProbes.Statistics;
using static TorchSharp.torch;

namespace TrainingProbes.Tests.Statistics;

/// <summary>
/// The between-window spread (<c>.spread</c>): on a synthetic run whose level drifts, whose windows wobble around it
/// (the parameters move between windows) and whose values carry minibatch noise of a known standard error, the run-level
/// interval <c>value +- 1.96 spread</c> covers the level in 95% +- 3% of windows, where the window's own jackknife
/// interval does not. A session publishes it as the successive-difference spread of the values it published.
/// </summary>
public sealed class RunLevelSpreadTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public void The_run_level_interval_covers_a_drifting_level_in_95_percent_of_windows()
    {
        const int windows = 20_000, span = 32;
        var random = new Random(11);
        double Normal() => Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
        var smoother = new WindowSmoother(series: 1, span);
        double walk = 0;
        int counted = 0, runCovers = 0, windowCovers = 0;
        for (int t = 0; t < windows; t++)
        {
            walk += 0.004 * Normal();
            double level = 0.3 + 0.1 * Math.Sin(2 * Math.PI * t / 2_000) + walk;   // the run's level: slow, drifting
            double wobble = 0.04 * Normal();                                         // this window's theta, off the level
            double error = 0.02 + 0.02 * random.NextDouble();                        // the window's (calibrated) jackknife
            double value = level + wobble + error * Normal();
            smoother.Add(0, value, error);
            if (t < span) continue;
            double spread = smoother.Spread(0);
            counted++;
            if (Math.Abs(value - level) <= 1.96 * spread) runCovers++;
            if (Math.Abs(value - level) <= 1.96 * error) windowCovers++;
        }

        double run = (double)runCovers / counted, window = (double)windowCovers / counted;
        output.WriteLine($"coverage of the level over {counted} windows: run-level interval {run:P1}, window's jackknife interval {window:P1}");
        Assert.InRange(run, 0.92, 0.98);
        Assert.True(window < 0.85, $"the window's own interval should miss the level's movement; it covered {window:P1}");
    }

    [Fact]
    public void The_spread_is_the_successive_difference_spread_of_the_oldest_first_values_held()
    {
        var smoother = new WindowSmoother(series: 2, windows: 4);
        double[] values = [1, 4, double.PositiveInfinity, 2, 7, 3];
        foreach (double v in values) smoother.Add(1, v, 0.1);
        // Held, oldest first: +Inf, 2, 7, 3. Pairs with a non-finite value are left out: (2, 7), (7, 3).
        Assert.Equal(Math.Sqrt((25.0 + 16.0) / (2 * 2)), smoother.Spread(1), 12);
        Assert.True(double.IsNaN(smoother.Spread(0)));
    }

    [Fact]
    public void A_session_publishes_each_values_spread_over_its_smoothing_windows()
    {
        var history = SmallRun.History(seed: 4, learningRate: 0.1, steps: 9, loss => new ProbeOptions
        {
            Interval = 1, OverheadBudget = null, Output = null, Loss = loss, SmoothingWindows = 5, Geometries = Geometry.Euclidean,
        });
        Assert.Equal(9, history.Count);
        foreach (string name in new[] { Indicators.Cosine, Indicators.ExampleSnr })
        {
            // Independently: the last 5 published values, oldest first.
            var last = history.Skip(4).Select(s => s.Get(name, Geometry.Euclidean)).ToArray();
            double expected = Math.Sqrt(last.Zip(last.Skip(1), (a, b) => (b - a) * (b - a)).Sum() / (2.0 * (last.Length - 1)));
            Assert.Equal(expected, history[^1].Get(name + Indicators.SpreadSuffix, Geometry.Euclidean), 12);
        }
    }
}
